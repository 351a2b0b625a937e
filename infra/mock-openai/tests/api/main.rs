//! End-to-end tests of the mock over real HTTP (reqwest and async-openai).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_compat;
mod common;
mod failures;
mod misc;
mod streaming;
