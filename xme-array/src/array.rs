/// An argument to split: call `i` receives element `i` (seed `XME.Array`).
///
/// Past its end, an `Array` keeps giving its last element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Array<T>(Vec<T>);

impl<T> Array<T> {
    /// An `Array` of the given elements.
    ///
    /// ```
    /// use xme_array::Array;
    /// let squares = Array::new((1..=3).map(|x| x * x));
    /// assert_eq!(squares.as_slice(), [1, 4, 9]);
    /// ```
    pub fn new(items: impl IntoIterator<Item = T>) -> Array<T> {
        Array(items.into_iter().collect())
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(xme_array::Array::from(["a", "b"]).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no element (splitting it is an error).
    ///
    /// ```
    /// assert!(xme_array::Array::<u8>::new([]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The element call `call` receives: element `call`, or the last one past
    /// the end. `None` only for an empty `Array`.
    ///
    /// ```
    /// use xme_array::Array;
    /// let a = Array::from([10, 20]);
    /// assert_eq!(a.padded(1), Some(&20));
    /// assert_eq!(a.padded(5), Some(&20)); // past the end: the last element
    /// assert_eq!(Array::<u8>::new([]).padded(0), None);
    /// ```
    pub fn padded(&self, call: usize) -> Option<&T> {
        self.0.get(call).or_else(|| self.0.last())
    }

    /// The elements.
    ///
    /// ```
    /// assert_eq!(xme_array::Array::from(vec![1, 2]).as_slice(), &[1, 2]);
    /// ```
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Back to a `Vec`.
    ///
    /// ```
    /// assert_eq!(xme_array::Array::from([1, 2]).into_vec(), vec![1, 2]);
    /// ```
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T> From<Vec<T>> for Array<T> {
    fn from(v: Vec<T>) -> Self {
        Array(v)
    }
}

impl<T: Clone> From<&[T]> for Array<T> {
    fn from(v: &[T]) -> Self {
        Array(v.to_vec())
    }
}

impl<T, const N: usize> From<[T; N]> for Array<T> {
    fn from(v: [T; N]) -> Self {
        Array(v.into())
    }
}

impl<T> FromIterator<T> for Array<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Array::new(iter)
    }
}

/// An argument given whole to every call (a non-`Array` argument of the seed).
///
/// With forked workers a closure can also simply capture such a value; `Same`
/// is for when the value should appear in the call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Same<T>(pub T);
