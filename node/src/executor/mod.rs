//! Running builds: see the module docs once written.
