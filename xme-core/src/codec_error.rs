//! Why a value could not be encoded or decoded, as xme's own type: postcard's
//! error type (and its major version) stays out of xme's public API, and the
//! message says what to do.

use serde::Serialize;

/// Why postcard could not encode or decode a value.
///
/// ```
/// use serde::{Serialize, Serializer};
///
/// struct Refuses;
/// impl Serialize for Refuses {
///     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
///         Err(serde::ser::Error::custom("the sensor is offline"))
///     }
/// }
/// let err = xme_core::result_frame::encode(&Refuses, "a reading").unwrap_err();
/// let source = std::error::Error::source(&err).unwrap();
/// assert_eq!(source.to_string(), "the value's Serialize impl failed: the sensor is offline");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    message: String,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

impl CodecError {
    /// A decoding failure, explained.
    #[doc(hidden)] // for xme's crates
    pub fn decoding(e: postcard::Error) -> CodecError {
        use postcard::Error as E;
        let message = match e {
            E::WontImplement => {
                "the type needs a self-describing format (an untagged or internally \
                 tagged enum, #[serde(flatten)], serde_json::Value or another `deserialize_any` \
                 type), which postcard cannot decode: give it a fixed shape (an externally tagged \
                 enum, a struct), or carry it as a JSON string"
                    .to_string()
            }
            E::DeserializeUnexpectedEnd => {
                "the bytes end before the value does (a different type, or cut short)".to_string()
            }
            E::DeserializeBadEncoding
            | E::DeserializeBadBool
            | E::DeserializeBadChar
            | E::DeserializeBadUtf8
            | E::DeserializeBadOption
            | E::DeserializeBadEnum
            | E::DeserializeBadVarint => {
                format!(
                    "the bytes are not a value of this type ({e}): a different type, or corrupted"
                )
            }
            E::SerdeDeCustom => {
                "the type's Deserialize impl refused the bytes (a different type, or corrupted)"
                    .to_string()
            }
            other => other.to_string(),
        };
        CodecError { message }
    }

    /// An encoding failure of `value`, explained. Postcard drops the message
    /// of a `Serialize` impl's own error; it is recovered by serializing the
    /// value again into a serializer that only keeps that message.
    #[doc(hidden)] // for xme's crates
    pub fn encoding<T: Serialize + ?Sized>(e: postcard::Error, value: &T) -> CodecError {
        let message = match e {
            postcard::Error::SerdeSerCustom => match value.serialize(capture::Capture) {
                Err(capture::Captured(Some(m))) => {
                    format!("the value's Serialize impl failed: {m}")
                }
                _ => "the value's Serialize impl failed (it gave no message)".to_string(),
            },
            postcard::Error::WontImplement => "the value needs a self-describing format \
                 (#[serde(flatten)], a map of unknown length, or `collect_str`), which postcard \
                 cannot write: give it a fixed shape"
                .to_string(),
            other => other.to_string(),
        };
        CodecError { message }
    }

    /// A failure with its own message (for xme's other codecs).
    #[doc(hidden)] // for xme's crates
    pub fn other(message: impl Into<String>) -> CodecError {
        CodecError {
            message: message.into(),
        }
    }
}

/// A serializer that writes nothing and keeps the message of the first
/// custom error a `Serialize` impl raises.
mod capture {
    use serde::Serialize;
    use serde::ser::{self, Serializer};

    pub(super) struct Capture;

    #[derive(Debug)]
    pub(super) struct Captured(pub Option<String>);

    impl std::fmt::Display for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0.as_deref().unwrap_or("captured"))
        }
    }
    impl std::error::Error for Captured {}
    impl ser::Error for Captured {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Captured(Some(msg.to_string()))
        }
    }

    macro_rules! ok {
        ($($name:ident($($t:ty),*);)*) => {$(
            fn $name(self, $(_: $t),*) -> Result<(), Captured> { Ok(()) }
        )*};
    }

    impl Serializer for Capture {
        type Ok = ();
        type Error = Captured;
        type SerializeSeq = Capture;
        type SerializeTuple = Capture;
        type SerializeTupleStruct = Capture;
        type SerializeTupleVariant = Capture;
        type SerializeMap = Capture;
        type SerializeStruct = Capture;
        type SerializeStructVariant = Capture;
        ok! {
            serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
            serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
            serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
            serialize_f64(f64); serialize_char(char); serialize_str(&str);
            serialize_bytes(&[u8]); serialize_none(); serialize_unit();
            serialize_unit_struct(&'static str);
            serialize_unit_variant(&'static str, u32, &'static str);
        }
        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Captured> {
            v.serialize(Capture)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<(), Captured> {
            v.serialize(Capture)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> Result<(), Captured> {
            v.serialize(Capture)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_tuple(self, _: usize) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Capture, Captured> {
            Ok(Capture)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Capture, Captured> {
            Ok(Capture)
        }
    }

    macro_rules! compound {
        ($($tr:ident { $($m:ident),* })*) => {$(
            impl ser::$tr for Capture {
                type Ok = ();
                type Error = Captured;
                $(compound!(@m $m);)*
                fn end(self) -> Result<(), Captured> { Ok(()) }
            }
        )*};
        (@m element) => {
            fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Captured> {
                v.serialize(Capture)
            }
        };
        (@m field) => {
            fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Captured> {
                v.serialize(Capture)
            }
        };
        (@m named_field) => {
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                v: &T,
            ) -> Result<(), Captured> {
                v.serialize(Capture)
            }
        };
        (@m key) => {
            fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Captured> {
                k.serialize(Capture)
            }
        };
        (@m value) => {
            fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Captured> {
                v.serialize(Capture)
            }
        };
    }

    compound! {
        SerializeSeq { element }
        SerializeTuple { element }
        SerializeTupleStruct { field }
        SerializeTupleVariant { field }
        SerializeMap { key, value }
        SerializeStruct { named_field }
        SerializeStructVariant { named_field }
    }
}
