//! Priority lists: absolute file paths, one per line, resolved to layer ranges through the
//! ext4 on the stack.

use std::path::Path;

use super::plan::Job;
use crate::stack::Stack;
use crate::{Error, Result};

/// The prefetch a priority list asks for.
pub fn plan_list(path: &Path, _stack: &Stack) -> Result<(Vec<Job>, usize)> {
    Err(Error::InvalidArgument(format!("{}: priority lists are not supported yet", path.display())))
}
