//! A converter between JSON and the Python XME 4.2 wire format.
//!
//! `xme_wire < message.json > message.xme` encodes a JSON object as the
//! Python package's `Monitor.marshal` would; `xme_wire --decode` reads wire
//! bytes and prints the JSON object. Bad input: a message on stderr, exit 1.

use std::io::{Read, Write};
use std::process::ExitCode;

use xme::monitor::{Codec, XmeWire};

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let decode = match args.next().as_deref() {
        None => false,
        Some("--decode") => true,
        Some(other) => {
            return Err(format!(
                "unknown argument {other:?}; usage: xme_wire [--decode] < input > output"
            ));
        }
    };
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let wire = XmeWire::default();
    let output = if decode {
        let map = wire
            .decode(&input)
            .map_err(|e| format!("not an XME wire message: {e}"))?;
        let mut text = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
        text.push(b'\n');
        text
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(&input).map_err(|e| format!("stdin is not JSON: {e}"))?;
        let map = value
            .as_object()
            .ok_or("the JSON must be an object (a message map)")?;
        wire.encode(map).map_err(|e| e.to_string())?
    };
    std::io::stdout()
        .write_all(&output)
        .map_err(|e| format!("cannot write stdout: {e}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xme_wire: {msg}");
            ExitCode::FAILURE
        }
    }
}
