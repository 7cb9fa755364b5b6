//! What the import benches share: a layer tar built from this machine's
//! own files (real ELF libraries and data compress as images do).

use std::path::Path;

/// A tar of the files under `src` (sorted, depth first, symlinks kept as
/// links), stopping once `limit` bytes of file data are in.
pub(crate) fn build_tar(src: &Path, limit: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::with_capacity(limit as usize + (16 << 20)));
    builder.follow_symlinks(false);
    let mut stack = vec![src.to_owned()];
    let mut total = 0u64;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if total >= limit {
                return builder.into_inner().unwrap();
            }
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let name = path.strip_prefix("/").unwrap_or(&path);
            if meta.is_dir() {
                let _ = builder.append_dir(name, &path);
                stack.push(path);
            } else if (meta.is_file() || meta.file_type().is_symlink())
                && builder.append_path_with_name(&path, name).is_ok()
                && meta.is_file()
            {
                total += meta.len();
            }
        }
    }
    builder.into_inner().unwrap()
}
