// The programs are in the `gre` binary target (src/main.rs); this empty library only lets
// gre-user name this crate as a build dependency, so cargo rebuilds the object when it changes.
#![no_std]
