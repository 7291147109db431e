//! Both codecs: Python XME 4.2.5 vectors both ways, every sealed error, and
//! random and mutated frames.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use xme_monitor::{Codec, Message, MonitorError, Sealed, XmeWire, swap_nibbles};

fn vectors() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("python/vectors.json");
    let list: Vec<Value> = serde_json::from_str(text).unwrap();
    list.into_iter()
        .map(|v| {
            let hex = v["wire_hex"].as_str().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (v["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

#[test]
fn python_vectors_decode_and_reencode_byte_for_byte() {
    let wire = XmeWire::default();
    let vs = vectors();
    assert!(vs.len() >= 8);
    for (name, bytes) in &vs {
        let map = wire.decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = wire.encode(&map).unwrap();
        assert_eq!(&again, bytes, "{name}: re-encoded bytes differ");
    }
    let get = |name: &str| -> Message {
        let (_, b) = vs.iter().find(|(n, _)| n == name).unwrap();
        wire.decode(b).unwrap()
    };
    let ints = get("integers");
    assert_eq!(ints["big"].to_string(), "9007199254740993");
    assert_eq!(ints["huge"].to_string(), "1267650600228229401496703205376");
    assert_eq!(ints["neg"].as_i64(), Some(i64::MIN));
    let floats = get("floats");
    assert_eq!(
        floats["negzero"].as_f64().map(f64::to_bits),
        Some((-0.0f64).to_bits())
    );
    assert_eq!(floats["e16"].as_f64(), Some(1e16));
    let strings = get("strings");
    assert_eq!(strings["emoji"], "\u{1F600}");
    assert_eq!(
        strings["controls"],
        "\u{0}\u{1}\u{1f}\u{7f}\n\r\t\u{8}\u{c}"
    );
    let order: Vec<String> = get("order").keys().cloned().collect();
    assert_eq!(order, ["z", "a", "m"]);
}

#[test]
fn rust_values_encode_as_python_would() {
    let msg = json!({"f": 1e16, "g": 0.1, "n": -0.0, "s": "é\u{0}", "l": [1, {"x": null}]});
    let mut bytes = XmeWire::default().encode(msg.as_object().unwrap()).unwrap();
    swap_nibbles(&mut bytes);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        r#"{"f": 1e+16, "g": 0.1, "n": -0.0, "s": "\u00e9\u0000", "l": [1, {"x": null}]}"#
    );
}

/// The Python with XME 4.2.5, if one is set up (`.ci/run` makes one).
fn python() -> Option<String> {
    let candidates = [
        std::env::var("XME_PYTHON").ok(),
        Some("/tmp/xmevenv/bin/python".to_string()),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import XME.Manager.Monitor"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn live_round_trip_through_the_python_package() {
    let Some(py) = python() else {
        eprintln!("skipped: no Python with XME==4.2.5 (set XME_PYTHON)");
        return;
    };
    let wire = XmeWire::default();
    let mut maps: Vec<Message> = vectors()
        .iter()
        .map(|(_, b)| wire.decode(b).unwrap())
        .collect();
    maps.push(
        json!({"rust": [1.5, -0.0, 12345678901234567890u64, "ü\u{1}😀"], "t": true})
            .as_object()
            .unwrap()
            .clone(),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/unmarshal.py");
    let mut child = Command::new(&py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for m in &maps {
            let hex: String = wire
                .encode(m)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            writeln!(stdin, "{hex}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), maps.len());
    for (m, line) in maps.iter().zip(lines) {
        // What Python printed (sorted keys) equals the same map sorted and
        // written by our Python-style writer.
        let mut sorted = m.clone();
        sort_deep(&mut sorted);
        let mut ours = wire.encode(&sorted).unwrap();
        swap_nibbles(&mut ours);
        assert_eq!(std::str::from_utf8(&ours).unwrap(), line);
    }
}

fn sort_deep(m: &mut Message) {
    m.sort_keys();
    for v in m.values_mut() {
        sort_value(v);
    }
}

fn sort_value(v: &mut Value) {
    match v {
        Value::Object(m) => sort_deep(m),
        Value::Array(items) => items.iter_mut().for_each(sort_value),
        _ => {}
    }
}

#[test]
fn every_sealed_error_is_distinct() {
    let sealed = Sealed::new([3; 32]);
    let msg = json!({"k": "v", "n": [1, 2, 3]});
    let frame = sealed.encode(msg.as_object().unwrap()).unwrap();
    assert_eq!(Value::Object(sealed.decode(&frame).unwrap()), msg);
    // Two seals of one message differ (fresh nonce).
    assert_ne!(frame, sealed.encode(msg.as_object().unwrap()).unwrap());

    assert!(matches!(
        Sealed::new([4; 32]).decode(&frame),
        Err(MonitorError::WrongKey)
    ));
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x10;
        let e = sealed.decode(&bad).unwrap_err();
        let ok = match i {
            0..=3 => matches!(e, MonitorError::Foreign),
            4 => matches!(e, MonitorError::UnsupportedVersion(_)),
            5..=12 => matches!(e, MonitorError::WrongKey),
            _ => matches!(e, MonitorError::Tampered),
        };
        assert!(ok, "byte {i}: {e}");
    }
    for len in 0..frame.len() {
        let e = sealed.decode(&frame[..len]).unwrap_err();
        assert!(
            matches!(e, MonitorError::Truncated { .. } | MonitorError::Tampered),
            "len {len}: {e}"
        );
    }
    assert!(matches!(
        sealed.decode(b"{\"json\": \"not sealed\"}"),
        Err(MonitorError::Foreign)
    ));
    let small = Sealed::new([3; 32]).max_frame(32);
    assert!(matches!(
        small.decode(&frame),
        Err(MonitorError::FrameTooLarge { max: 32, .. })
    ));
    assert!(matches!(
        small.encode(msg.as_object().unwrap()),
        Err(MonitorError::FrameTooLarge { .. })
    ));
    // Sealed JSON that is not an object.
    let arr = sealed.seal(b"[1, 2]").unwrap();
    assert!(matches!(
        sealed.decode(&arr),
        Err(MonitorError::NotAnObject { .. })
    ));
    let junk = sealed.seal(b"{oops").unwrap();
    assert!(matches!(
        sealed.decode(&junk),
        Err(MonitorError::BadJson(_))
    ));

    let wire = XmeWire::default();
    assert!(matches!(
        wire.decode(&[0xb5, 0x13]),
        Err(MonitorError::BadJson(_))
    )); // "[1" swapped
    assert!(matches!(
        XmeWire::default().max_frame(4).decode(&frame),
        Err(MonitorError::FrameTooLarge { .. })
    ));
}

/// xorshift: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fuzz(rounds: usize) {
    let sealed = Sealed::new([9; 32]);
    let wire = XmeWire::default();
    let msg = json!({"a": [1, 2.5, "x"], "b": {"c": null}});
    let good_sealed = sealed.encode(msg.as_object().unwrap()).unwrap();
    let good_wire = wire.encode(msg.as_object().unwrap()).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut accepted = 0;
    for round in 0..rounds {
        let base = if round % 2 == 0 {
            &good_sealed
        } else {
            &good_wire
        };
        let mut f = match rng.next() % 3 {
            0 => (0..rng.next() % 96)
                .map(|_| rng.next() as u8)
                .collect::<Vec<u8>>(),
            1 => {
                let mut f = base.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % f.len();
                    f[i] = rng.next() as u8;
                }
                f
            }
            _ => base[..(rng.next() as usize) % base.len()].to_vec(),
        };
        if rng.next().is_multiple_of(7) {
            f.extend((0..rng.next() % 8).map(|_| rng.next() as u8));
        }
        accepted += usize::from(sealed.decode(&f).is_ok());
        accepted += usize::from(wire.decode(&f).is_ok());
        let _ = xme_monitor::rpc::decode_frame_for_fuzzing(&sealed, &f);
    }
    // Forged sealed frames never pass.
    assert!(accepted < rounds / 10, "{accepted}");
}

#[test]
fn random_and_mutated_frames_never_panic() {
    fuzz(100_000);
}

#[test]
#[ignore = "long: a million frames"]
fn a_million_random_and_mutated_frames_never_panic() {
    fuzz(1_000_000);
}
