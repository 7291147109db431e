use std::ops::Index;

use crate::TaskError;

/// The results of one function's calls, in call order. A failed call holds its
/// [`TaskError`]; it never hides or loses the other results.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use xme_exec::{Array, Xme};
/// let out = Xme::new().pnum(2).fun(|x: u32| {
///     assert!(x != 3, "three is unlucky");
///     x * 10
/// }, Array::new(1..=4))?;
/// assert_eq!(out.len(), 4);
/// assert_eq!(out.ok_values(), vec![10, 20, 40]);
/// assert!(out[2].as_ref().unwrap_err().is_panic());
/// assert!(out.into_result().is_err()); // the first failure, with its call index
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Outcomes<R> {
    results: Vec<Result<R, TaskError>>,
}

impl<R> Outcomes<R> {
    pub(crate) fn new(results: Vec<Result<R, TaskError>>) -> Self {
        Outcomes { results }
    }

    /// Number of calls.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// True when there were no calls.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Each call's outcome, in call order.
    pub fn iter(&self) -> std::slice::Iter<'_, Result<R, TaskError>> {
        self.results.iter()
    }

    /// All values if every call succeeded, else the first failure.
    pub fn into_result(self) -> Result<Vec<R>, TaskError> {
        self.results.into_iter().collect()
    }

    /// The failed calls.
    pub fn errors(&self) -> impl Iterator<Item = &TaskError> {
        self.results.iter().filter_map(|r| r.as_ref().err())
    }

    /// True if every call succeeded.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(Result::is_ok)
    }

    /// The values of the calls that succeeded, in call order.
    pub fn ok_values(&self) -> Vec<R>
    where
        R: Clone,
    {
        self.results
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect()
    }

    /// The outcomes as a `Vec`.
    pub fn into_vec(self) -> Vec<Result<R, TaskError>> {
        self.results
    }
}

/// `outcomes[call]`: the result of call `call`.
///
/// # Panics
/// If `call` is not below [`Outcomes::len`].
impl<R> Index<usize> for Outcomes<R> {
    type Output = Result<R, TaskError>;

    fn index(&self, call: usize) -> &Self::Output {
        &self.results[call]
    }
}

impl<R> IntoIterator for Outcomes<R> {
    type Item = Result<R, TaskError>;
    type IntoIter = std::vec::IntoIter<Result<R, TaskError>>;

    fn into_iter(self) -> Self::IntoIter {
        self.results.into_iter()
    }
}

impl<'a, R> IntoIterator for &'a Outcomes<R> {
    type Item = &'a Result<R, TaskError>;
    type IntoIter = std::slice::Iter<'a, Result<R, TaskError>>;

    fn into_iter(self) -> Self::IntoIter {
        self.results.iter()
    }
}
