//! duet-verification: model checking front end and cross-crate tests.
