//! eddy's integration tests: one binary, real servers, real sockets, and the official
//! `phoenix` JS client under Node for the browser side (`browser`).

mod browser;
mod cluster;
mod cluster_faults;
mod cluster_nodes;
mod cluster_nodes_faults;
mod cluster_queue;
mod cluster_seam;
mod cluster_store;
mod compat;
mod connections;
mod console;
mod crash;
mod crash_loop;
mod delivery;
mod disk;
mod dlq;
mod examples;
mod flow;
mod golden;
mod hostile;
mod ids;
mod isolation;
mod observe;
mod openai_client;
mod power;
mod providers;
mod redrive;
mod socket;
mod ssrf;
mod streaming;
mod support;
mod sync;
mod tidy;
mod validation;
mod wire;
