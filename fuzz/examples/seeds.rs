//! Writes the seed inputs of every fuzz target to `corpus/<target>/` (or
//! under the directory given as the first argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    let seeds = cactus_fuzz::seeds::all();
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    eprintln!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}
