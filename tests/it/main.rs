//! The integration suite: one binary, each module one area, every test against a real daemon
//! on an ephemeral loopback port and, for deliveries, a real local receiver.

mod pg;
mod process;
mod support;

mod backup;
mod catalogue;
mod cli;
mod crash;
mod delivery;
mod docs;
mod errors;
mod faults;
mod nodes;
mod openapi;
mod operational;
mod packaging;
mod portal;
mod probe;
mod ratelimit;
mod recovery;
mod retention;
mod secrets;
mod smoke;
mod webhooks;
