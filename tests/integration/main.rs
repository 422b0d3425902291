//! Integration tests: each starts the real `bosun` binary and drives it over HTTP with raw
//! requests, skopeo, and the `oci-client` crate.

mod harness;

mod blobs;
mod cli;
mod connections;
mod disk_full;
mod errors;
mod gc;
mod gc_crash;
mod gc_races;
mod gc_stress;
mod health;
mod hostile;
mod listing;
mod manifests;
mod observability;
mod oci_client;
mod retention;
mod shutdown;
mod skopeo;
mod uploads;
