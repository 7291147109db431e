use serde::de::DeserializeOwned;

use crate::ShmError;

/// A value as stored: postcard bytes, decoded on demand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RawValue(Vec<u8>);

impl RawValue {
    pub(crate) fn new(bytes: Vec<u8>) -> RawValue {
        RawValue(bytes)
    }

    /// Encodes `value` as the table would store it.
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<RawValue, ShmError> {
        postcard::to_stdvec(value)
            .map(RawValue)
            .map_err(|e| ShmError::Encode {
                key: String::new(),
                source: xme_core::CodecError::encoding(e, value),
            })
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes as a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ShmError> {
        xme_core::result_frame::decode(&self.0, std::any::type_name::<T>()).map_err(|e| match e {
            xme_core::Error::Decode { source, .. } => ShmError::WrongType {
                key: String::new(),
                type_name: std::any::type_name::<T>(),
                source,
            },
            other => ShmError::Region(other),
        })
    }
}
