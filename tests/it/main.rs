//! The integration suite: one binary, each module one area, every test against a real daemon
//! on an ephemeral loopback port and, for deliveries, a real local receiver.

mod support;

mod crash;
mod delivery;
mod retention;
mod smoke;
