//! Seed 3.1 / 3.2: three `distance` calls on logical processes (one blocking,
//! one to a named process, one to any), then: is the triangle right-angled?
//!
//! Forked: `cargo run --example mpi_triangle`. On the ranks of an MPI job
//! (built with `--features cluster`): `mpirun -n 3 target/debug/examples/mpi_triangle`.

use xme::mpi::{Mpi, MpiError, MpiHandle, To, Unit};

type Point = (f64, f64);

fn distance((p1, p2): (Point, Point)) -> f64 {
    ((p2.0 - p1.0).powi(2) + (p2.1 - p1.1).powi(2)).sqrt()
}

fn main_fn(m: &MpiHandle, distance: &Unit<(Point, Point), f64>) -> Result<bool, MpiError> {
    let points = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)];
    let l01 = m.block_acquire(distance, &(points[0], points[1]), To::Any)?;
    let first = m.processes()[0];
    let slot02 = m.acquire(distance, &(points[0], points[2]), To::Process(first))?;
    let slot12 = m.acquire(distance, &(points[1], points[2]), To::Any)?;
    println!("status while the calls run: {:?}", m.status());
    let (l02, l12) = (m.get(slot02)?, m.get(slot12)?);
    println!("l01 = {l01}, l02 = {l02}, l12 = {l12}");
    let right = |a: f64, b: f64, c: f64| (a * a + b * b - c * c).abs() < 1e-9;
    Ok(right(l01, l02, l12) || right(l01, l12, l02) || right(l12, l02, l01))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut mpi = Mpi::new(3)?; // 1 main process + 2 logical processes
    let distance = mpi.register("distance", distance);
    let right = mpi.run(|m| main_fn(m, &distance))??;
    println!("right-angled: {right}");
    Ok(())
}
