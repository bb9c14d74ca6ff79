//! Integration tests of `imagejobs-stubs`: real servers on OS-assigned ports, called over HTTP.

mod blob;
mod faults;
mod support;
mod worker;
