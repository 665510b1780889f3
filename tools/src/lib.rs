//! hydractl internals.
