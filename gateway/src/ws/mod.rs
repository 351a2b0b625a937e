//! The WebSocket side: handshake ([`upgrade`]), one task per connection ([`session`]), the
//! frame vocabulary ([`protocol`]) and local fan-out ([`hub`]).

pub mod hub;
pub mod protocol;
pub mod session;
pub mod upgrade;
