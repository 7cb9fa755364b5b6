//! The test images' layouts, built for real from this machine's files (no
//! root, no registry): sizes and the share of the big layer, which the
//! experiments' results depend on.

use edgeswarm_testnet::images::{self, Layout, SINGLE_BULK_FRACTION};

fn build(mb: u64, layout: Layout) -> Vec<u64> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (image, budget) = rt
        .block_on(images::build_sized(mb, layout, "v1", dir.path()))
        .unwrap_or_else(|e| panic!("building the {mb} MB {} image: {e}", layout.name()));
    // The same budget gives byte-identical base layers (what v2 relies on).
    let again = rt
        .block_on(edgeswarm_node::registry::testing::build_image(
            images::image_spec(layout, budget, "v2"),
            dir.path(),
        ))
        .unwrap();
    let sizes: Vec<u64> = image.layers.iter().map(|l| l.size).collect();
    let n = sizes.len();
    for i in 0..n - 1 {
        assert_eq!(
            image.layers[i].digest,
            again.layers[i].digest,
            "{} layer {i} differs between tags",
            layout.name()
        );
    }
    assert_ne!(image.layers[n - 1].digest, again.layers[n - 1].digest);
    sizes
}

#[test]
fn single_layout_puts_the_bulk_in_one_layer() {
    // 30 MB: the big layer, a small /usr/share layer, busybox, the app.
    let sizes = build(30, Layout::Single);
    let total: u64 = sizes.iter().sum();
    eprintln!("single30: {sizes:?} = {total}");
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    let want_big = 30e6 * SINGLE_BULK_FRACTION;
    assert!(
        (sizes[0] as f64 - want_big).abs() / want_big <= 0.05,
        "big layer {} bytes, want ~{want_big:.0}",
        sizes[0]
    );
    assert!(
        (total as f64 - 30e6).abs() / 30e6 <= 0.05,
        "image {total} bytes, want ~30 MB"
    );
    assert!(
        sizes[1..].iter().all(|&s| s < sizes[0] / 10),
        "every other layer small: {sizes:?}"
    );

    // 10 MB: busybox alone is more than what the big layer leaves, so no
    // /usr/share layer.
    let sizes = build(10, Layout::Single);
    eprintln!("single10: {sizes:?}");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    let want_big = 10e6 * SINGLE_BULK_FRACTION;
    // Small images land less closely: one library file is a sizeable
    // part of them.
    assert!(
        (sizes[0] as f64 - want_big).abs() / want_big <= 0.1,
        "big layer {} bytes, want ~{want_big:.0}",
        sizes[0]
    );
}

#[test]
fn single_targets_split_the_image() {
    // Issue 11's image: 46 of 48.7 MB in one layer.
    let (big, share) = images::single_targets(49, 1_100_000);
    assert_eq!(big, (49e6 * 46.0 / 48.7) as u64);
    assert_eq!(big + share + 1_100_000, 49_000_000);
    assert_eq!(images::single_targets(10, 1_100_000).1, 0);
}

#[test]
fn layouts_parse_and_name_their_repositories() {
    for l in [Layout::Base, Layout::Spread, Layout::Single] {
        assert_eq!(l.name().parse::<Layout>().unwrap(), l);
    }
    assert!("one".parse::<Layout>().is_err());
    assert_eq!(images::layout_repo(50, Layout::Base), "testnet/img50");
    assert_eq!(images::layout_repo(49, Layout::Single), "testnet/single49");
    assert_eq!(
        images::layout_repo(220, Layout::Spread),
        "testnet/spread220"
    );
}
