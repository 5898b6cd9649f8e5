//! Change sources.
