//! The integration suite: one binary, each module one area, every test against a real daemon
//! on an ephemeral loopback port and, for deliveries, a real local receiver.

mod pg;
mod process;
mod support;

mod cli;
mod crash;
mod delivery;
mod docs;
mod errors;
mod faults;
mod nodes;
mod openapi;
mod packaging;
mod portal;
mod ratelimit;
mod retention;
mod smoke;
mod webhooks;
