//! Seed 2.4: a shared Monitor updated by several children under a lock, an
//! update refused to an unauthorised operator, a marshal/unmarshal round
//! trip with each codec, and a tampered frame rejected.

use serde_json::json;
use xme::Operator;
use xme::core::process;
use xme::monitor::{Monitor, MonitorError, XmeWire};
use xme::security::LockType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = [0x5e; 32]; // share it with every party that reads the frames
    let monitor = Monitor::builder()
        .lock_type(LockType::Authorisation)
        .key(key)
        .build()?;
    let workers: Vec<Operator> = (0..4).map(|_| Operator::alloc()).collect();
    monitor.security().authorize(&workers)?;

    let children: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, &op)| {
            let monitor = &monitor;
            process::fork_child(move || {
                for step in 0..10 {
                    monitor
                        .modify(op, |m| {
                            let n = m.get("updates").and_then(|v| v.as_u64()).unwrap_or(0);
                            m.insert("updates".into(), json!(n + 1));
                            m.insert(
                                format!("child {i}"),
                                json!({"step": step, "pid": process::current_pid()}),
                            );
                            Ok(())
                        })
                        .expect("an authorised child may write");
                }
                0
            })
        })
        .collect::<Result<_, _>>()?;
    for c in children {
        c.wait()?;
    }
    println!("updates by 4 children: {}", monitor.get(&["updates"])?);

    let stranger = Operator::alloc();
    match monitor.update(json!({"updates": 0}), stranger) {
        Err(MonitorError::Lock(e)) => println!("refused: {e}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    let sealed = monitor.marshal()?;
    let copy = Monitor::builder().key(key).build()?;
    copy.unmarshal(&sealed, Operator::ADMIN)?;
    println!(
        "sealed round trip: {} bytes, equal: {}",
        sealed.len(),
        copy.get(&[])? == monitor.get(&[])?
    );

    let wire = monitor.marshal_with(&XmeWire::default())?;
    let python_side = Monitor::new()?;
    python_side.unmarshal_with(&XmeWire::default(), &wire, Operator::ADMIN)?;
    println!(
        "XME wire round trip: {} bytes, equal: {}",
        wire.len(),
        python_side.get(&[])? == monitor.get(&[])?
    );

    let mut tampered = sealed.clone();
    tampered[sealed.len() / 2] ^= 0x01;
    match copy.unmarshal(&tampered, Operator::ADMIN) {
        Err(e @ MonitorError::Tampered) => println!("tampered frame rejected: {e}"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }
    Ok(())
}
