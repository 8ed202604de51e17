//! Translators for clients of older systems: each is a [`crate::session::Dialect`]
//! that decodes its wire format into core operations and encodes core events
//! back, holding no state another door or node would need.

pub mod legacy_worker;
