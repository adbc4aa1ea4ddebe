//! eddy's integration tests: one binary, real servers, real sockets, and the official
//! `phoenix` JS client under Node for the browser side (`browser`).

mod browser;
mod console;
mod crash;
mod delivery;
mod flow;
mod socket;
mod support;
mod validation;
