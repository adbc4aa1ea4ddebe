//! eddy's integration tests: one binary, real servers, real sockets.

mod browser;
mod console;
mod crash;
mod delivery;
mod flow;
mod socket;
mod support;
mod validation;
