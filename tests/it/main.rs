//! eddy's integration tests: one binary, real servers, real sockets.

mod console;
mod crash;
mod delivery;
mod flow;
mod openai_client;
mod providers;
mod socket;
mod support;
mod sync;
mod validation;
