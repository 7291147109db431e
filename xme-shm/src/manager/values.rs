//! Reading and writing values: `get`, `set`, `update`, `update_with`,
//! `modify`, `delete`, `items`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::{Operator, process};

use super::Manager;
use super::keys::{
    RESERVED_KEYS, STATUS_KEY, check_reserved_value, decode, encode, is_status_key, partly_done,
    refuse_reserved_key,
};
use crate::{RawValue, ShmError};

impl Manager {
    /// Stores `value` under `key` (the seed's `set`): lock-free, replaces any value.
    ///
    /// # Errors
    /// [`ShmError::Reserved`] for a reserved key, [`ShmError::KeyTooLong`],
    /// [`ShmError::Encode`], [`ShmError::CapacityFull`] for a new key past the
    /// capacity, [`ShmError::ArenaFull`] / [`ShmError::ValueTooLarge`].
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.set("point", &(1.5f64, -2.0f64))?;
    /// assert_eq!(xmem.get::<(f64, f64)>("point")?, (1.5, -2.0));
    /// assert!(matches!(xmem.set("__XMEM__", &0), Err(ShmError::Reserved { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), ShmError> {
        let bytes = encode(key, value)?;
        check_reserved_value(key, &bytes)?;
        self.table()
            .set(key, &bytes, process::current_pid())
            .map(drop)
    }

    /// Stores bytes already encoded (from [`RawValue::encode`] or
    /// [`get_raw`](Self::get_raw)) under `key`, without encoding them again:
    /// the fast way to move large values.
    ///
    /// ```
    /// use xme_shm::{RawValue, XmemBuilder};
    ///
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().arena_bytes(8 << 20).build()?;
    /// let big = RawValue::encode(&vec![7u8; 4 << 20])?; // 4 MiB: an extent of pages
    /// xmem.set_raw("big", &big)?;
    /// assert_eq!(xmem.get_raw("big")?.as_ref(), Some(&big));
    /// assert_eq!(xmem.get::<Vec<u8>>("big")?.len(), 4 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_raw(&self, key: &str, value: &RawValue) -> Result<(), ShmError> {
        check_reserved_value(key, value.bytes())?;
        self.table()
            .set(key, value.bytes(), process::current_pid())
            .map(drop)
    }

    /// The value of `key` as a `T`.
    ///
    /// Values are postcard bytes, which do not record their type: bytes that
    /// are not a valid `T` give [`ShmError::WrongType`], but a value of another
    /// type whose bytes happen to be a valid `T` decodes (a `0i32` reads as an
    /// empty `String`). Keep one type per key.
    ///
    /// # Errors
    /// [`ShmError::NotFound`], or [`ShmError::WrongType`] when the bytes are
    /// not a `T`.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("name", "xme")?.build()?;
    /// assert_eq!(xmem.get::<String>("name")?, "xme");
    /// assert!(matches!(xmem.get::<String>("nobody"), Err(ShmError::NotFound(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ShmError> {
        let raw = self
            .get_raw(key)?
            .ok_or_else(|| ShmError::NotFound(key.to_string()))?;
        decode(key, raw.bytes())
    }

    /// The encoded value of `key`, if present.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("n", &7u8)?.build()?;
    /// assert_eq!(xmem.get_raw("n")?.unwrap().decode::<u8>()?, 7);
    /// assert_eq!(xmem.get_raw("missing")?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_raw(&self, key: &str) -> Result<Option<RawValue>, ShmError> {
        if key == STATUS_KEY {
            return Ok(Some(RawValue::new(encode(key, &self.statuses()?)?)));
        }
        let mut out = Vec::new();
        Ok(self
            .table()
            .get_into(key, &mut out, process::current_pid())?
            .then(|| RawValue::new(out)))
    }

    /// A copy of the entries for `keys` (the seed's `get_table(*keys)`); with no
    /// key, the whole table. A missing key is [`ShmError::NotFound`].
    ///
    /// # Errors
    /// [`ShmError::NotFound`] for a missing key.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.value("b", &2)?.build()?;
    /// let t = xmem.get_table(&["a", "b"])?;
    /// assert_eq!(t["b"].decode::<i32>()?, 2);
    /// assert!(xmem.get_table(&[])?.contains_key("__XMEM__")); // the whole table
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_table(&self, keys: &[&str]) -> Result<BTreeMap<String, RawValue>, ShmError> {
        if keys.is_empty() {
            return Ok(self.items()?.into_iter().collect());
        }
        keys.iter()
            .map(|&k| {
                let v = self
                    .get_raw(k)?
                    .ok_or_else(|| ShmError::NotFound(k.to_string()))?;
                Ok((k.to_string(), v))
            })
            .collect()
    }

    /// Every entry (the seed's `items`), `__STATUS__` gathered into one.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.build()?;
    /// let keys: Vec<String> = xmem.items()?.into_iter().map(|(k, _)| k).collect();
    /// assert!(keys.contains(&"a".to_string()) && keys.contains(&"__STATUS__".to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn items(&self) -> Result<Vec<(String, RawValue)>, ShmError> {
        let mut items: Vec<(String, RawValue)> = self
            .table()
            .entries_where(|k| !is_status_key(k), process::current_pid())?
            .into_iter()
            .map(|(k, v)| (k, RawValue::new(v)))
            .collect();
        let statuses = encode(STATUS_KEY, &self.statuses()?)?;
        items.push((STATUS_KEY.to_string(), RawValue::new(statuses)));
        Ok(items)
    }

    /// Number of keys, reserved keys included (`__STATUS__` counts as one).
    ///
    /// # Errors
    /// As [`items`](Self::items).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let reserved = xmem.len()?; // __STATUS__, __GUARD__, __XMEM__
    /// xmem.set("k", &1)?;
    /// assert_eq!(xmem.len()?, reserved + 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> Result<usize, ShmError> {
        Ok(self
            .table()
            .keys_where(|k| !is_status_key(k), process::current_pid())?
            .len()
            + 1)
    }

    /// True when only the reserved keys exist.
    ///
    /// # Errors
    /// As [`items`](Self::items).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert!(xmem.is_empty()?);
    /// xmem.set("k", &1)?;
    /// assert!(!xmem.is_empty()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> Result<bool, ShmError> {
        Ok(self.len()? <= RESERVED_KEYS.len())
    }

    /// Stores every entry while holding the Manager's lock as `op` (the seed's
    /// `update(newtable, Operator)`). All values are encoded and checked before
    /// the first is stored. Each key changes atomically; readers may see some
    /// keys of the batch updated before others.
    ///
    /// # Errors
    /// The lock's refusal ([`ShmError::Lock`]); as [`set`](Self::set) for each
    /// entry, checked before any is stored; [`ShmError::PartlyDone`] if storing
    /// failed part-way (the entries before it stay).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.update([("a", 1), ("b", 2)], Operator::ADMIN)?;
    /// assert_eq!(xmem.get::<i32>("b")?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update<K, V, I>(&self, entries: I, op: Operator) -> Result<(), ShmError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        let encoded = entries
            .into_iter()
            .map(|(k, v)| {
                let key = k.as_ref().to_string();
                let bytes = encode(&key, &v)?;
                check_reserved_value(&key, &bytes)?;
                Ok((key, bytes))
            })
            .collect::<Result<Vec<_>, ShmError>>()?;
        self.update_encoded(&encoded, op)
    }

    /// `update` with values already encoded and checked.
    pub(crate) fn update_encoded(
        &self,
        encoded: &[(String, Vec<u8>)],
        op: Operator,
    ) -> Result<(), ShmError> {
        let _guard = self.security.lock(op)?;
        let pid = process::current_pid();
        for (n, (key, bytes)) in encoded.iter().enumerate() {
            if let Err(e) = self.table().set(key, bytes, pid) {
                return Err(partly_done(encoded.iter().map(|(k, _)| k), n, e));
            }
        }
        Ok(())
    }

    /// Applies `f` to the value of `key` atomically, as
    /// [`update_with`](Self::update_with) does, and returns what `f` returned;
    /// a missing key is [`ShmError::NotFound`]. `f` may run more than once if
    /// another process changes the key meanwhile.
    ///
    /// # Errors
    /// [`ShmError::NotFound`]; as [`update_with`](Self::update_with).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("queue", &vec![1, 2, 3])?.build()?;
    /// let first = xmem.modify("queue", |q: &mut Vec<i32>| q.remove(0))?;
    /// assert_eq!((first, xmem.get::<Vec<i32>>("queue")?), (1, vec![2, 3]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn modify<T, R, F>(&self, key: &str, mut f: F) -> Result<R, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> R,
    {
        refuse_reserved_key(key)?;
        let mut out = None;
        self.table().update(key, process::current_pid(), |old| {
            let Some(old) = old else {
                return Err(ShmError::NotFound(key.to_string()));
            };
            let mut value = decode::<T>(key, old)?;
            let r = f(&mut value);
            let bytes = encode(key, &value)?;
            check_reserved_value(key, &bytes)?;
            out = Some(r);
            Ok(Some(bytes))
        })??;
        Ok(out.expect("modify stored a value"))
    }

    /// Deletes `keys` while holding the lock as `op`; with no key, every
    /// non-reserved key. Returns how many existed. Reserved keys are refused
    /// before anything is deleted.
    ///
    /// # Errors
    /// The lock's refusal; [`ShmError::Reserved`] for a reserved key (nothing
    /// deleted); [`ShmError::PartlyDone`] if it failed part-way.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.value("b", &2)?.build()?;
    /// assert_eq!(xmem.delete(&["a", "zz"], Operator::ADMIN)?, 1);
    /// assert_eq!(xmem.delete(&[], Operator::ADMIN)?, 1); // every non-reserved key
    /// assert!(xmem.is_empty()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete(&self, keys: &[&str], op: Operator) -> Result<usize, ShmError> {
        if let Some(k) = keys
            .iter()
            .find(|k| RESERVED_KEYS.contains(k) || is_status_key(k.as_bytes()))
        {
            return Err(ShmError::Reserved {
                key: k.to_string(),
                what: "it cannot be deleted",
            });
        }
        let _guard = self.security.lock(op)?;
        let pid = process::current_pid();
        let all: Vec<String>;
        let keys: Vec<&str> = if keys.is_empty() {
            all = self.table().keys_where(
                |k| !is_status_key(k) && !RESERVED_KEYS.iter().any(|r| r.as_bytes() == k),
                pid,
            )?;
            all.iter().map(String::as_str).collect()
        } else {
            keys.to_vec()
        };
        let mut n = 0;
        for (i, key) in keys.iter().enumerate() {
            match self.table().delete(key, pid) {
                Ok(existed) => n += usize::from(existed),
                Err(e) => return Err(partly_done(keys.iter(), i, e)),
            }
        }
        Ok(n)
    }

    /// Changes `key` atomically: `f` gets the current value (`None` if absent)
    /// and returns the new one; if another process changed the key meanwhile,
    /// `f` runs again on the newer value. Lock-free, no lost update. Returns
    /// the value stored.
    ///
    /// # Errors
    /// As [`set`](Self::set); [`ShmError::WrongType`] if the current value is
    /// not a `T`.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// for _ in 0..3 {
    ///     xmem.update_with("hits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    /// }
    /// assert_eq!(xmem.get::<u64>("hits")?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update_with<T, F>(&self, key: &str, f: F) -> Result<T, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        self.update_with_as(key, false, f)
    }

    /// [`update_with`](Self::update_with) as the owner of a reserved key
    /// (`owner`: no reserved-key check).
    pub(crate) fn update_with_as<T, F>(
        &self,
        key: &str,
        owner: bool,
        mut f: F,
    ) -> Result<T, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        if !owner {
            refuse_reserved_key(key)?;
        }
        let mut stored = None;
        let result = self.table().update(key, process::current_pid(), |old| {
            let old = old.map(|b| decode::<T>(key, b)).transpose()?;
            let new = f(old);
            let bytes = encode(key, &new)?;
            if !owner {
                check_reserved_value(key, &bytes)?;
            }
            stored = Some(new);
            Ok::<_, ShmError>(Some(bytes))
        })?;
        result?;
        Ok(stored.expect("update stored a value"))
    }
}
