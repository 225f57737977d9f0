//! Version 1 of the tag test filter.

const VERSION: &str = "v1";

include!("../../tag.rs");
