//! How a task's result crosses from its worker to the parent.

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::{CodecError, result_frame};

/// A value a task of the standard interface sends back from its worker.
///
/// Every serde type is one (encoded with postcard); so is [`RawBytes`],
/// whose bytes cross as they are, for results already encoded by the task
/// (a pickled Python object, an image, a file's contents), which a second
/// encoding would only copy and lengthen.
///
/// ```
/// use xme_exec::{Array, RawBytes, Xme};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let typed = Xme::new().fun(|x: u32| x * 2, Array::new([1u32, 2]))?; // postcard
/// assert_eq!(typed.into_result()?, [2, 4]);
/// let raw = Xme::new().fun(|x: u8| RawBytes(vec![x; 3]), Array::new([7u8]))?; // as they are
/// assert_eq!(raw.into_result()?[0].as_slice(), [7, 7, 7]);
/// # Ok(())
/// # }
/// ```
pub trait Reply: Sized {
    /// In the worker: appends the value's bytes to `out`.
    ///
    /// # Errors
    /// Why the value could not be encoded (the call then fails with
    /// [`TaskFailure::Encode`](crate::TaskFailure::Encode)).
    ///
    /// ```
    /// use xme_exec::Reply;
    /// let mut out = Vec::new();
    /// 300u16.encode_into(&mut out).unwrap();
    /// assert_eq!(u16::decode_from(&out).unwrap(), 300);
    /// ```
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// In the parent: the value from the bytes [`encode_into`](Self::encode_into) wrote.
    ///
    /// # Errors
    /// [`xme_core::Error::Decode`] if the bytes are not such a value (the
    /// call then fails with [`TaskFailure::Decode`](crate::TaskFailure::Decode)).
    ///
    /// ```
    /// use xme_exec::Reply;
    /// assert!(bool::decode_from(&[7]).is_err());
    /// ```
    fn decode_from(bytes: &[u8]) -> Result<Self, xme_core::Error>;
}

impl<T: Serialize + DeserializeOwned> Reply for T {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| CodecError::encoding(e, self))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn decode_from(bytes: &[u8]) -> Result<Self, xme_core::Error> {
        result_frame::decode(bytes, "a task result")
    }
}

/// Bytes a task returns as they are: no second encoding on the way back.
///
/// ```
/// use xme_exec::{Array, RawBytes, Xme};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let out = Xme::new().fun(|s: &str| RawBytes::from(s.as_bytes().to_vec()), Array::from(["ab", "c"]))?;
/// let texts: Vec<Vec<u8>> = out.into_result()?.into_iter().map(RawBytes::into_inner).collect();
/// assert_eq!(texts, [b"ab".to_vec(), b"c".to_vec()]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawBytes(pub Vec<u8>);

impl RawBytes {
    /// The bytes.
    ///
    /// ```
    /// assert_eq!(xme_exec::RawBytes(vec![1, 2]).into_inner(), [1, 2]);
    /// ```
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }

    /// The bytes, borrowed.
    ///
    /// ```
    /// assert_eq!(xme_exec::RawBytes(vec![1, 2]).as_slice(), [1, 2]);
    /// ```
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for RawBytes {
    fn from(bytes: Vec<u8>) -> RawBytes {
        RawBytes(bytes)
    }
}

impl std::ops::Deref for RawBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Reply for RawBytes {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.0);
        Ok(())
    }

    fn decode_from(bytes: &[u8]) -> Result<Self, xme_core::Error> {
        Ok(RawBytes(bytes.to_vec()))
    }
}
