//! What an access list costs per request: `AccessRule::admits` with 10 and with 100 000 ids
//! (a visitor on the list and one off it), and what reading a 100 000-line list file costs
//! at a reload.
//!
//!     cargo bench --bench access            # a Markdown table on stdout

use std::hint::black_box;
use std::time::Instant;

use wxgate::access::{AccessConfig, RuleLoader};

const LOOKUPS: usize = 2_000_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("wxgate-access-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    println!("| ids on the list | load the file | admitted visitor | visitor off the list |");
    println!("|---|---|---|---|");
    for size in [10usize, 100_000] {
        let ids: Vec<String> = (0..size).map(openid).collect();
        let file = dir.join(format!("ids-{size}.txt"));
        std::fs::write(&file, ids.join("\n")).expect("the list file");
        let config = AccessConfig {
            openids_file: Some(file),
            ..AccessConfig::default()
        };
        let started = Instant::now();
        let rule = RuleLoader::default()
            .load("routes[0].access", &config)
            .expect("the list loads");
        let load = started.elapsed();
        let on = &ids[size / 2];
        let off = openid(size + 1);
        let time = |who: &str| {
            let started = Instant::now();
            for _ in 0..LOOKUPS {
                black_box(rule.admits(black_box(who), black_box(None)));
            }
            started.elapsed().as_nanos() as f64 / LOOKUPS as f64
        };
        let (hit, miss) = (time(on), time(&off));
        println!(
            "| {size} | {:.1} ms | {hit:.1} ns | {miss:.1} ns |",
            load.as_secs_f64() * 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WeChat-shaped openid: `o` and 27 characters.
fn openid(n: usize) -> String {
    format!("o6_bmjrPTlm6_{n:015}")
}
