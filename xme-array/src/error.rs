/// Why arguments cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// An `Array` had no element, so no call could receive one.
    #[error(
        "Array argument at position {position} is empty: every Array needs at least one element (padding repeats the last one)"
    )]
    EmptyArray {
        /// Zero-based position of the argument in the argument tuple.
        position: usize,
    },
}
