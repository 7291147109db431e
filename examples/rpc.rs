//! Seed 2.4.1: a server process and a client process on loopback. The
//! client makes a few calls, one to an unknown function and one that
//! panics, and prints each result or error; both exit.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use xme::core::process;
use xme::monitor::Sealed;
use xme::monitor::rpc::{Client, Server};

const KEY: [u8; 32] = [0x24; 32];

fn serve(addr: std::net::SocketAddr, ready: std::os::fd::OwnedFd) -> i32 {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_tx = Mutex::new(stop_tx);
    let server = Server::new(Sealed::new(KEY))
        .register("add", |(a, b): (f64, f64)| a + b)
        .register("upper", |s: String| s.to_uppercase())
        .register("divide", |(a, b): (i64, i64)| -> i64 {
            if b == 0 {
                panic!("division by zero");
            }
            a / b
        })
        .register("stop", move |_: ()| {
            let _ = stop_tx.lock().map(|tx| tx.send(()));
            "stopping"
        });
    let handle = match server.serve_tcp(addr) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("server: {e}");
            return 1;
        }
    };
    drop(ready); // EOF on the pipe tells the parent we listen
    // Serve until a client asks to stop (at most a minute), then shut down
    // gracefully: the "stop" call itself still gets its reply.
    let _ = stop_rx.recv_timeout(Duration::from_secs(60));
    handle.shutdown();
    0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Pick a free port, then hand it to the server process.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let server = process::fork_child(move || serve(addr, ready_w))?;
    // EOF on the pipe: the server is listening.
    let mut buf = [0u8; 1];
    let _ = nix::unistd::read(&ready_r, &mut buf);

    let client = process::fork_child(move || {
        let client = match Client::connect_tcp(addr, Sealed::new(KEY)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("client: {e}");
                return 1;
            }
        };
        let wait = Duration::from_secs(5);
        println!(
            "add(1.5, 2.25) = {:?}",
            client.call::<_, f64>("add", &(1.5, 2.25), wait)
        );
        println!(
            "upper(\"xme\") = {:?}",
            client.call::<_, String>("upper", &"xme", wait)
        );
        match client.call::<_, i64>("missing", &(), wait) {
            Ok(v) => println!("missing() = {v}"),
            Err(e) => println!("missing() failed: {e}"),
        }
        match client.call::<_, i64>("divide", &(1, 0), wait) {
            Ok(v) => println!("divide(1, 0) = {v}"),
            Err(e) => println!("divide(1, 0) failed: {e}"),
        }
        println!(
            "divide(9, 3) = {:?}",
            client.call::<_, i64>("divide", &(9, 3), wait)
        );
        println!("stop() = {:?}", client.call::<_, String>("stop", &(), wait));
        0
    })?;
    let client_fate = client.wait()?;
    let server_fate = server.wait()?;
    println!("client: {client_fate:?}; server: {server_fate:?}");
    Ok(())
}
