//! Paths of tar entries inside the image: cleaning (refusing anything that would leave the
//! image) and resolving parent directories, following symlinks as the image sees them.

use std::collections::HashMap;
use std::collections::VecDeque;

use ext2fs::{Attrs, Filesystem, Ino, Kind};

use crate::{Error, Result};

/// Symlinks followed while resolving one path (the kernel's limit).
const MAX_LINKS: usize = 40;

fn refuse(path: &[u8], why: &str) -> Error {
    Error::InvalidArgument(format!("refusing entry {:?}: {why}", String::from_utf8_lossy(path)))
}

/// Checks one name of a path.
pub fn check_name(name: &[u8], path: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(refuse(path, "a name is longer than 255 bytes"));
    }
    if name.contains(&0) {
        return Err(refuse(path, "a name contains NUL"));
    }
    Ok(())
}

/// The components of an entry path, without `.` and empty ones. Absolute paths and `..` are
/// refused: they would leave the image.
pub fn clean(path: &[u8]) -> Result<Vec<Vec<u8>>> {
    if path.first() == Some(&b'/') {
        return Err(refuse(path, "absolute path"));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse(path, "'..' would leave the image")),
            name => {
                check_name(name, path)?;
                out.push(name.to_vec());
            }
        }
    }
    Ok(out)
}

/// Resolves directories, remembering what it found until something is removed.
#[derive(Default)]
pub struct Resolver {
    cache: HashMap<Vec<Vec<u8>>, Ino>,
}

impl Resolver {
    /// Forgets what was resolved (after a removal).
    pub fn forget(&mut self) {
        self.cache.clear();
    }

    /// The directory at `comps`, following symlinks within the image. Missing directories are
    /// made with `make` (mode 0755, its owner and times) if given, else the result is `None`.
    pub fn resolve_dir(&mut self, fs: &mut Filesystem, comps: &[Vec<u8>], make: Option<&Attrs>) -> Result<Option<Ino>> {
        if let Some(&ino) = self.cache.get(comps) {
            return Ok(Some(ino));
        }
        let shown = comps.join(&b'/');
        let err = |e: ext2fs::Error| Error::InvalidArgument(format!("{}: {e}", String::from_utf8_lossy(&shown)));
        // The real path so far, as (name, inode) from the root.
        let mut stack: Vec<Ino> = vec![ext2fs::fs::ROOT];
        let mut todo: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            let cur = *stack.last().unwrap_or(&ext2fs::fs::ROOT);
            if name == b".." {
                if stack.len() == 1 {
                    return Err(refuse(&shown, "a symlink climbs above the image root"));
                }
                stack.pop();
                continue;
            }
            let ino = match fs.lookup(cur, &name).map_err(err)? {
                Some(i) => i,
                None => {
                    let Some(a) = make else { return Ok(None) };
                    let attrs = Attrs { perm: 0o755, ..a.clone() };
                    fs.create(cur, &name, &Kind::Directory, &attrs).map_err(err)?
                }
            };
            let inode = fs.read_inode(ino).map_err(err)?;
            match (inode.i_mode as u32) & 0o170000 {
                0o040000 => stack.push(ino),
                0o120000 => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(refuse(&shown, "too many levels of symbolic links"));
                    }
                    let target = fs.read_link(ino).map_err(err)?;
                    if target.first() == Some(&b'/') {
                        stack.truncate(1); // absolute: from the image root
                    }
                    for c in target.split(|&b| b == b'/').rev() {
                        match c {
                            b"" | b"." => {}
                            c => todo.push_front(c.to_vec()),
                        }
                    }
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{}: {} is not a directory",
                        String::from_utf8_lossy(&shown),
                        String::from_utf8_lossy(&name)
                    )))
                }
            }
        }
        let dir = *stack.last().unwrap_or(&ext2fs::fs::ROOT);
        self.cache.insert(comps.to_vec(), dir);
        Ok(Some(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean(b"./a//b/./c").unwrap(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(clean(b"./").unwrap().is_empty());
        assert!(clean(b"/etc/passwd").is_err());
        assert!(clean(b"a/../../etc").is_err());
        assert!(clean(b"a/..").is_err());
        assert!(clean(&[b'x'; 256]).is_err());
    }
}
