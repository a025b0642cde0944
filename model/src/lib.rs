//! Stateright models of a Duet controller pair.
