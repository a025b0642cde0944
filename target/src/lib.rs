//! duet-target: the runtime around duet-core.
