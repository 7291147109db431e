//! The Manager's call buffer methods (seed 2.2): `append`, `exec`, `get`,
//! `clean`, `get_buffers`, `len`, and registering functions by name.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xme_core::{Operator, process};
use xme_security::LockType;

use crate::buffer::call_buffer::Event;
use crate::buffer::call_ring::{Orphan, PAYLOAD_HEADER, Pop};
use crate::calls::call::{Builtin, Call, Named, Target, reply};
use crate::manager::Trampoline;
use crate::manager::{Manager, ProcessStatus, XMEM_KEY, check_reserved_value};
use crate::{RawValue, ShmError};

/// How long `get` spins on the mailbox before sleeping: a Guard on another
/// core answers a trivial call well within it.
const GET_SPIN: Duration = Duration::from_micros(100);
/// Longest single sleep of a waiter, so that it notices a dead Guard.
const WAIT_SLICE: Duration = Duration::from_millis(5);

/// A receipt for an appended call: which operator's mailbox gets its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket<R> {
    /// The operator the call was appended as.
    pub operator: Operator,
    /// The call's serial among that operator's calls (from 1).
    pub serial: u64,
    _result: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Ticket<R> {
    /// Waits for the operator's latest result, as [`Manager::get_result`]:
    /// this call's result if the operator appended nothing after it.
    ///
    /// # Errors
    /// As [`Manager::get_result`].
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard};
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// let ticket = xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?;
    /// ticket.wait(&xmem, Duration::from_secs(5))?;
    /// guard.stop(Duration::from_secs(5))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(&self, manager: &Manager, max_wait: Duration) -> Result<R, ShmError> {
        manager.get_result(self.operator, max_wait)
    }
}

/// What one [`Manager::exec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// Ran a call (successfully or not) for `operator`.
    Ran {
        /// Whose call it was.
        operator: Operator,
        /// What it named.
        call: String,
        /// Whether it ended in an error (also left in the mailbox).
        failed: bool,
        /// Whether it was a table write that may have changed `__GUARD__`
        /// (`"Table::update"` / `"Table::set"`): the Guard re-reads its status.
        touched_guard: bool,
    },
    /// The buffer was empty.
    Empty,
    /// The oldest call is still being appended by a live process.
    Busy,
}

/// A call in the buffer, as [`Manager::get_buffers`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCall {
    /// Its position in the buffer (order of appending).
    pub position: u64,
    /// Whose call.
    pub operator: Operator,
    /// Its serial among the operator's calls.
    pub serial: u64,
    /// What it names.
    pub call: String,
    /// The pid running it now, if any.
    pub running_in: Option<u32>,
}

/// A snapshot of the buffer (the seed's `get_buffers`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BufferSnapshot {
    /// Calls appended and not finished, oldest first.
    pub pending: Vec<PendingCall>,
    /// Operators with a result waiting, with the serial of that result.
    pub results: Vec<(Operator, u64)>,
}

fn decode_payload(payload: &[u8]) -> Result<(Operator, u64, Target, &[u8]), String> {
    if payload.len() < PAYLOAD_HEADER {
        return Err("truncated call".into());
    }
    let op = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let serial = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let op = Operator::from_id(op).ok_or("call without an operator")?;
    let (target, args): (Target, &[u8]) = postcard::take_from_bytes(&payload[PAYLOAD_HEADER..])
        .map_err(|e| format!("undecodable call: {e}"))?;
    let (args, _) = postcard::take_from_bytes::<&[u8]>(args)
        .map_err(|e| format!("undecodable call arguments: {e}"))?;
    Ok((op, serial, target, args))
}

fn failure(status: u8, call: &str, message: &str) -> Vec<u8> {
    reply::err(status, &format!("{call}\0{message}"))
}

fn lock_type_of(raw: u32) -> Option<LockType> {
    [
        LockType::Disable,
        LockType::Mutex,
        LockType::Authorisation,
        LockType::ReadWrite,
        LockType::Spin,
    ]
    .into_iter()
    .find(|t| *t as u32 == raw)
}

impl Manager {
    /// Registers `f` under `name` so that any process sharing or attaching the
    /// Manager can call it ([`Named::call`], then [`append`](Self::append)).
    /// The name is added to `__XMEM__`. A Guard runs it only if the Guard's
    /// process registered it too (register before forking the Guard, or in the
    /// Guard program).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Guard, XmemBuilder};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let add = xmem.register("add", |_m, (a, b): (i64, i64)| a + b)?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&add.call(&(2, 3))?, op)?;
    /// assert_eq!(xmem.get_result::<i64>(op, Duration::from_secs(5))?, 5);
    /// guard.stop(Duration::from_secs(5))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn register<A, R, F>(&self, name: &str, f: F) -> Result<Named<A, R>, ShmError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        F: Fn(&Manager, A) -> R + Send + Sync + 'static,
    {
        if Builtin::from_name(name).is_some() {
            return Err(ShmError::Reserved {
                key: name.to_string(),
                what: "it is the name of a built-in operation",
            });
        }
        self.registry.insert(name, f);
        self.update_with_as(XMEM_KEY, true, |names: Option<Vec<String>>| {
            let mut names = names.unwrap_or_default();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            names
        })?;
        Ok(Named::new(name.to_string()))
    }

    /// A handle to the function registered as `name` (by this or another
    /// process); [`ShmError::UnknownFunction`] if `__XMEM__` has no such name.
    /// The types are the caller's promise: a mismatch shows as a failed call.
    ///
    /// # Errors
    /// [`ShmError::UnknownFunction`] if no process registered `name`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.register("twice", |_m, x: i32| 2 * x)?;
    /// let twice = xmem.named::<i32, i32>("twice")?; // e.g. in a program that attached by name
    /// let guard = Guard::new().spawn(&xmem)?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&twice.call(&21)?, op)?.wait(&xmem, WAIT)?;
    /// assert!(matches!(xmem.named::<(), ()>("nope"), Err(ShmError::UnknownFunction { .. })));
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn named<A: Serialize, R>(&self, name: &str) -> Result<Named<A, R>, ShmError> {
        self.check_name(name)?;
        Ok(Named::new(name.to_string()))
    }

    fn check_name(&self, name: &str) -> Result<(), ShmError> {
        if self.registry.is_known(name) {
            return Ok(());
        }
        let names: Vec<String> = self.get(XMEM_KEY)?;
        if names.iter().any(|n| n == name) && Builtin::from_name(name).is_none() {
            self.registry.learn(name);
            return Ok(());
        }
        Err(ShmError::UnknownFunction {
            name: name.to_string(),
        })
    }

    /// Puts `call` on the buffer as `op`, waiting while the buffer is full
    /// (the seed's `append`). Its result goes to `op`'s mailbox: take it with
    /// [`get_result`](Self::get_result), or ignore it (a later result replaces it).
    ///
    /// Calls appended by one thread run in the order appended; a call is
    /// appended whole or not at all, even if the process is killed meanwhile.
    ///
    /// # Errors
    /// [`ShmError::CallTooLarge`] past the builder's `call_bytes`;
    /// [`ShmError::MailboxesFull`] when every mailbox is taken;
    /// [`ShmError::ForeignFunction`] for a pointer call from a process outside the
    /// fork family.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// let op = xmem.alloc_operator();
    /// let ticket = xmem.append(&Call::table_set("k", &5u8)?, op)?;
    /// ticket.wait(&xmem, WAIT)?; // the Guard ran it
    /// assert_eq!(xmem.get::<u8>("k")?, 5);
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn append<R>(&self, call: &Call<R>, op: Operator) -> Result<Ticket<R>, ShmError> {
        self.append_until(call, op, None)
    }

    /// [`append`](Self::append), waiting at most `max_wait` for room:
    /// [`ShmError::BufferFull`] after that.
    ///
    /// # Errors
    /// [`ShmError::BufferFull`] if no cell frees within `max_wait`; else as
    /// [`append`](Self::append).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().buffer_capacity(2).build()?; // no Guard runs
    /// let op = xmem.alloc_operator();
    /// let call = Call::table_set("k", &1u8)?;
    /// xmem.append_timeout(&call, op, Duration::from_millis(10))?;
    /// xmem.append_timeout(&call, op, Duration::from_millis(10))?;
    /// let full = xmem.append_timeout(&call, op, Duration::from_millis(10));
    /// assert!(matches!(full, Err(ShmError::BufferFull { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn append_timeout<R>(
        &self,
        call: &Call<R>,
        op: Operator,
        max_wait: Duration,
    ) -> Result<Ticket<R>, ShmError> {
        self.append_until(call, op, Some(Instant::now() + max_wait))
    }

    fn append_until<R>(
        &self,
        call: &Call<R>,
        op: Operator,
        deadline: Option<Instant>,
    ) -> Result<Ticket<R>, ShmError> {
        let mut target = call.target.clone();
        match &mut target {
            Target::Builtin(_) => {}
            Target::Named(name) => self.check_name(name)?,
            Target::Pointer {
                tag,
                function,
                trampoline,
                object,
            } => {
                let key = self.family.ok_or(ShmError::ForeignFunction)?;
                *tag = key.tag(*function, *trampoline, object, &call.args);
            }
        }
        self.append_target(&target, &call.args, op, deadline)
    }

    /// Appends a function-pointer call as a process outside the fork family
    /// could, by writing the region itself: with an address of its choosing
    /// and a guessed tag (tests of the Guard's refusal).
    #[doc(hidden)]
    pub fn append_forged_pointer_call(
        &self,
        function: usize,
        trampoline: usize,
        guessed_tag: u64,
        op: Operator,
    ) -> Result<Ticket<()>, ShmError> {
        let target = Target::Pointer {
            tag: guessed_tag,
            function: function as u64,
            trampoline: trampoline as u64,
            object: String::new(),
        };
        let args = postcard::to_stdvec(&()).expect("the unit encodes");
        self.append_target(&target, &args, op, None)
    }

    fn append_target<R>(
        &self,
        target: &Target,
        args: &[u8],
        op: Operator,
        deadline: Option<Instant>,
    ) -> Result<Ticket<R>, ShmError> {
        let mut bytes = Vec::with_capacity(16 + args.len());
        postcard::to_io(target, &mut bytes).map_err(|e| ShmError::Encode {
            key: "<call>".into(),
            source: xme_core::CodecError::encoding(e, target),
        })?;
        postcard::to_io(args, &mut bytes).map_err(|e| ShmError::Encode {
            key: "<call>".into(),
            source: xme_core::CodecError::encoding(e, args),
        })?;
        let cfg = self.buffer.config();
        if bytes.len() > cfg.call_bytes {
            return Err(ShmError::CallTooLarge {
                len: bytes.len(),
                max: cfg.call_bytes,
            });
        }
        let (mailbox, serial) = self.buffer.note_append(op)?;
        match self.buffer.push(op, serial, &bytes, deadline) {
            Ok(()) => Ok(Ticket {
                operator: op,
                serial,
                _result: PhantomData,
            }),
            Err(e) => {
                self.buffer.unnote_append(mailbox);
                Err(e)
            }
        }
    }

    /// Runs the oldest call in the buffer and leaves its result in its
    /// operator's mailbox (the seed's `exec`). A call that panics or fails
    /// leaves an error there instead; `exec` itself only fails if the region
    /// is unusable. Normally a [`Guard`](crate::Guard) calls this in a loop.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the buffer is corrupt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use xme_shm::Executed;
    /// let xmem = XmemBuilder::new().build()?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&Call::table_set("k", &9u8)?, op)?;
    /// assert!(matches!(xmem.exec()?, Executed::Ran { .. })); // run here, no Guard
    /// assert_eq!(xmem.get::<u8>("k")?, 9);
    /// assert!(matches!(xmem.exec()?, Executed::Empty));
    /// # Ok(())
    /// # }
    /// ```
    pub fn exec(&self) -> Result<Executed, ShmError> {
        let (pos, payload) = match self.buffer.pop() {
            Pop::Empty => return Ok(Executed::Empty),
            Pop::Busy => return Ok(Executed::Busy),
            Pop::Corrupt(why) => return Err(ShmError::BadLayout(why)),
            Pop::Call { pos, payload } => (pos, payload),
        };
        let out = self.run_payload(&payload);
        self.buffer.complete(pos);
        Ok(out)
    }

    fn run_payload(&self, payload: &[u8]) -> Executed {
        let (op, serial, target, args) = match decode_payload(payload) {
            Ok(parts) => parts,
            // Only our own `append` writes cells; an undecodable one has no
            // mailbox to report to.
            Err(_) => {
                return Executed::Ran {
                    operator: Operator::ADMIN,
                    call: "<undecodable>".into(),
                    failed: true,
                    touched_guard: false,
                };
            }
        };
        let name = target.describe();
        let touched_guard = matches!(
            target,
            Target::Builtin(Builtin::TableUpdate | Builtin::TableSet)
        );
        let result = process::catch_panic(|| self.run_target(&target, args, op));
        let reply = match result {
            Ok(Ok(bytes)) if bytes.len() < self.buffer.reply_bytes() => reply::ok(bytes),
            Ok(Ok(bytes)) => failure(
                reply::FAILED,
                &name,
                &format!(
                    "the result of {} bytes exceeds the Manager's reply_bytes of {} (build with a larger reply_bytes)",
                    bytes.len(),
                    self.buffer.reply_bytes() - 1
                ),
            ),
            Ok(Err(message)) => failure(reply::FAILED, &name, &message),
            Err(panic) => failure(reply::PANICKED, &name, &panic.to_string()),
        };
        let failed = reply[0] != reply::OK;
        if let Ok(Some(i)) = self.buffer.mailbox(op, true) {
            self.buffer.store_reply(i, serial, &reply);
        }
        Executed::Ran {
            operator: op,
            call: name,
            failed,
            touched_guard,
        }
    }

    fn run_target(&self, target: &Target, args: &[u8], op: Operator) -> Result<Vec<u8>, String> {
        fn de<'a, T: Deserialize<'a>>(args: &'a [u8]) -> Result<T, String> {
            postcard::from_bytes(args).map_err(|e| format!("bad arguments: {e}"))
        }
        fn en<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
            postcard::to_stdvec(v).map_err(|e| format!("could not encode the result: {e}"))
        }
        let s = |e: ShmError| e.to_string();
        match target {
            Target::Builtin(b) => match b {
                Builtin::TableUpdate => {
                    let entries: Vec<(String, Vec<u8>)> = de(args)?;
                    for (k, v) in &entries {
                        check_reserved_value(k, v).map_err(s)?;
                    }
                    self.update_encoded(&entries, op).map_err(s)?;
                    en(&())
                }
                Builtin::TableSet => {
                    let (k, v): (String, Vec<u8>) = de(args)?;
                    check_reserved_value(&k, &v).map_err(s)?;
                    self.table()
                        .set(&k, &v, process::current_pid())
                        .map_err(s)?;
                    en(&())
                }
                Builtin::TableDelete => {
                    let keys: Vec<String> = de(args)?;
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    en(&self.delete(&keys, op).map_err(s)?)
                }
                Builtin::TableGet => {
                    let keys: Vec<String> = de(args)?;
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    en(&self.get_table(&keys).map_err(s)?)
                }
                Builtin::TableItems => en(&self.items().map_err(s)?),
                Builtin::LockUpdate => {
                    let raw: u32 = de(args)?;
                    let t = lock_type_of(raw).ok_or(format!("no lock type {raw}"))?;
                    self.security().update_lock(t);
                    en(&())
                }
                Builtin::StatusUpdate => {
                    let entry: ProcessStatus = de(args)?;
                    self.record_status_as(op, entry, true).map_err(s)?;
                    en(&())
                }
            },
            Target::Named(name) => {
                let f = self.registry.get(name).ok_or_else(|| {
                    format!("{name:?} is not registered in the Guard's process (pid {}): register it there too", process::current_pid())
                })?;
                f(self, args)
            }
            Target::Pointer {
                tag,
                function,
                trampoline,
                object,
            } => {
                let Some(key) = self.family else {
                    return Err("a function pointer can only run in a Guard forked from the Manager's builder".into());
                };
                if key.tag(*function, *trampoline, object, args) != *tag {
                    return Err("refused a function-pointer call whose tag does not check: it was not appended by a process of the Manager's fork family".into());
                }
                // SAFETY: the tag checks under the family key, which only
                // processes forked from the builder hold (never the region), so
                // `Call::function` / `SharedObject::call` made this call in this
                // fork family: `trampoline` is a `Trampoline` and `function` a
                // function of the types it expects, at the same addresses here.
                let t = unsafe { std::mem::transmute::<usize, Trampoline>(*trampoline as usize) };
                t(self, *function, object, args)
            }
        }
    }

    /// Waits up to `max_wait` for the result of `op`'s latest call and takes
    /// it (the seed's buffer `get(Operator, MaxWaitTime)`; [`get`](Self::get)
    /// reads the value table).
    ///
    /// Errors: [`ShmError::GetTimeout`] (the seed's `XMEM_GET_FAIL`) past
    /// `max_wait`; [`ShmError::NoCallPending`] when `op` has nothing waiting;
    /// [`ShmError::GuardDied`] when the registered Guard died;
    /// [`ShmError::CallPanicked`] / [`ShmError::CallFailed`] (the seed's
    /// `GUARD_FUN_FAIL`) for a call that failed in the Guard.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().value("n", &3u32)?.build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&Call::table_get(&["n"])?, op)?;
    /// let table = xmem.get_result::<std::collections::BTreeMap<String, xme_shm::RawValue>>(op, WAIT)?;
    /// assert_eq!(table["n"].decode::<u32>()?, 3);
    /// assert!(matches!(xmem.get_result::<()>(op, WAIT), Err(ShmError::NoCallPending { .. })));
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_result<R: DeserializeOwned>(
        &self,
        op: Operator,
        max_wait: Duration,
    ) -> Result<R, ShmError> {
        let raw = self.get_reply(op, max_wait)?;
        postcard::from_bytes(&raw).map_err(|e| ShmError::WrongType {
            key: format!("<result for {op}>"),
            type_name: std::any::type_name::<R>(),
            source: xme_core::CodecError::decoding(e),
        })
    }

    fn get_reply(&self, op: Operator, max_wait: Duration) -> Result<Vec<u8>, ShmError> {
        let started = Instant::now();
        let deadline = started + max_wait;
        let i = self
            .buffer
            .mailbox(op, false)?
            .ok_or(ShmError::NoCallPending { operator: op })?;
        let mut spins = 0u32;
        loop {
            if let Some(r) = self.buffer.try_take(i) {
                // The operator's last result taken: its mailbox is free for
                // another operator (unless a call was appended meanwhile).
                self.buffer.free_mailbox(op, i);
                return decode_reply(r);
            }
            let (appended, _, taken) = self.buffer.counters(i);
            if appended <= taken {
                return Err(ShmError::NoCallPending { operator: op });
            }
            let now = Instant::now();
            if now - started < GET_SPIN {
                spins += 1;
                if spins.is_multiple_of(32) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let guard = self.buffer.guard_pid();
            if guard != 0 && !process::is_alive(guard as i32) {
                // The result may have landed just before the Guard died.
                if let Some(r) = self.buffer.try_take(i) {
                    return decode_reply(r);
                }
                return Err(ShmError::GuardDied { pid: guard });
            }
            if now >= deadline {
                return Err(ShmError::GetTimeout {
                    operator: op,
                    waited: now - started,
                });
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            self.buffer.wait(Event::Done, slice, || {
                let (a, d, t) = self.buffer.counters(i);
                d >= a && d > t
            });
        }
    }

    /// Discards `op`'s waiting result, if any (the seed's `clean`).
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the buffer is corrupt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&Call::table_set("k", &1u8)?, op)?;
    /// xmem.exec()?;
    /// xmem.clean(op)?; // the result is dropped, its mailbox freed
    /// assert!(xmem.get_result::<()>(op, Duration::from_millis(10)).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn clean(&self, op: Operator) -> Result<(), ShmError> {
        if let Some(i) = self.buffer.mailbox(op, false)? {
            self.buffer.discard(i);
            self.buffer.free_mailbox(op, i);
        }
        Ok(())
    }

    /// Calls appended and not yet taken by the Guard (the seed's `len`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?;
    /// assert_eq!(xmem.buffer_len(), 1);
    /// xmem.exec()?;
    /// assert_eq!(xmem.buffer_len(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn buffer_len(&self) -> usize {
        self.buffer.len()
    }

    /// The pid of the Guard serving the buffer (it may have died: then
    /// waiting callers get [`ShmError::GuardDied`] and a new Guard may start).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert_eq!(xmem.guard_pid(), None);
    /// let guard = Guard::new().spawn(&xmem)?;
    /// xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?.wait(&xmem, WAIT)?;
    /// assert_eq!(xmem.guard_pid(), Some(guard.pid() as u32));
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn guard_pid(&self) -> Option<u32> {
        Some(self.buffer.guard_pid()).filter(|&p| p != 0)
    }

    /// Calls run from the buffer since it was built.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?;
    /// xmem.exec()?;
    /// assert_eq!(xmem.executed(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn executed(&self) -> u64 {
        self.buffer.executed()
    }

    /// A snapshot of pending calls and waiting results (the seed's `get_buffers`).
    ///
    /// ```
    /// use xme_shm::{Call, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let op = xmem.alloc_operator();
    /// xmem.append(&Call::table_set("k", &1u8)?, op)?;
    /// assert_eq!(xmem.get_buffers().pending.len(), 1); // appended, not run yet
    /// xmem.exec()?;
    /// assert_eq!(xmem.get_buffers().results.len(), 1); // its result waits for op
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_buffers(&self) -> BufferSnapshot {
        let pending = self
            .buffer
            .pending()
            .into_iter()
            .filter_map(|(position, payload, running_in)| {
                let (operator, serial, target, _) = decode_payload(&payload).ok()?;
                Some(PendingCall {
                    position,
                    operator,
                    serial,
                    call: target.describe(),
                    running_in,
                })
            })
            .collect::<Vec<_>>();
        let mut pending = pending;
        pending.sort_by_key(|p| p.position);
        BufferSnapshot {
            pending,
            results: self.buffer.waiting_results(),
        }
    }

    /// Reports as failed every call that a dead Guard was running, and frees
    /// its cell; returns how many. A starting [`Guard`](crate::Guard) does this.
    ///
    /// ```
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = xme_shm::XmemBuilder::new().build()?;
    /// assert_eq!(xmem.recover(), 0); // no Guard died running a call
    /// # Ok(())
    /// # }
    /// ```
    pub fn recover(&self) -> usize {
        let orphans = self.buffer.recover();
        let n = orphans.len();
        for (pos, Orphan { consumer, payload }) in orphans {
            if let Ok((op, serial, target, _)) = decode_payload(&payload)
                && let Ok(Some(i)) = self.buffer.mailbox(op, true)
            {
                let msg = format!(
                    "the Guard (pid {consumer}) died while running this call; it was not run again"
                );
                self.buffer.store_reply(
                    i,
                    serial,
                    &failure(reply::FAILED, &target.describe(), &msg),
                );
            }
            self.buffer.complete(pos);
        }
        n
    }
}

fn decode_reply(r: Vec<u8>) -> Result<Vec<u8>, ShmError> {
    let Some((&status, rest)) = r.split_first() else {
        return Err(ShmError::CallFailed {
            call: "<unknown>".into(),
            message: "empty result".into(),
        });
    };
    if status == reply::OK {
        return Ok(rest.to_vec());
    }
    let text = String::from_utf8_lossy(rest);
    let (call, message) = text.split_once('\0').unwrap_or(("<unknown>", &text));
    let (call, message) = (call.to_string(), message.to_string());
    Err(if status == reply::PANICKED {
        ShmError::CallPanicked { call, message }
    } else {
        ShmError::CallFailed { call, message }
    })
}

/// The result type of built-in `"Table::get"` calls.
pub type TableCopy = BTreeMap<String, RawValue>;
