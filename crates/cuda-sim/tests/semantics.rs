//! CUDA semantics the project's current kernels do not exercise, checked on nvcc's PTX of
//! tests/kernels/features.cu against answers computed here: barriers and shared memory,
//! shuffles and votes, atomics, divergent loops, dynamic shared memory, bf16/f16 rounding,
//! directed rounding; and the faults the simulator must stop on, each with its one line.

mod common;

use common::{compile_ptx, nvcc, values};
use dynact_cuda_sim::{Arg, Gpu, LaunchConfig, ModuleId};

fn features() -> Option<(Gpu, ModuleId)> {
    let ptx = compile_ptx(&nvcc()?, "tests/kernels/features.cu", true);
    let mut gpu = Gpu::new();
    let module = gpu.load_ptx(&ptx).unwrap();
    Some((gpu, module))
}

fn launch(gpu: &mut Gpu, m: ModuleId, name: &str, cfg: LaunchConfig, args: &[Arg]) {
    if let Err(e) = gpu.launch(m, name, cfg, args) {
        panic!("{e}");
    }
}

#[test]
fn a_shared_memory_tree_with_barriers_sums_each_block() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let n = 1000;
    let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32 - 8.0).collect();
    let (dx, out) = (gpu.upload(&x), gpu.upload(&[0f32; 4]));
    launch(
        &mut gpu,
        m,
        "block_sum",
        LaunchConfig::linear(4, 256),
        &[Arg::Ptr(dx), Arg::Ptr(out), Arg::I32(n as i32)],
    );
    let sums: Vec<f32> = gpu.download(out, 4).unwrap();
    for (b, s) in sums.iter().enumerate() {
        let want: f32 = x[b * 256..((b + 1) * 256).min(n)].iter().sum();
        assert_eq!(*s, want, "block {b}");
    }
    let record = gpu.launches.last().unwrap();
    assert!(record.counters.shared_accesses > 0);
}

#[test]
fn shuffles_and_votes_exchange_values_within_each_warp() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    // Integers, so every order of the sums gives the same float.
    let x: Vec<f32> = (0..128).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
    let dx = gpu.upload(&x);
    let (xor_out, down_out) = (gpu.upload(&[0f32; 128]), gpu.upload(&[0f32; 4]));
    launch(
        &mut gpu,
        m,
        "warp_sums",
        LaunchConfig::linear(2, 64),
        &[Arg::Ptr(dx), Arg::Ptr(xor_out), Arg::Ptr(down_out)],
    );
    let xor_sums: Vec<f32> = gpu.download(xor_out, 128).unwrap();
    let down_sums: Vec<f32> = gpu.download(down_out, 4).unwrap();
    for w in 0..4 {
        let want: f32 = x[w * 32..(w + 1) * 32].iter().sum();
        assert!(
            xor_sums[w * 32..(w + 1) * 32].iter().all(|&s| s == want),
            "warp {w}"
        );
        assert_eq!(down_sums[w], want, "warp {w}");
    }
    let (ballot, any_all, lane3) = (
        gpu.upload(&[0u32; 4]),
        gpu.upload(&[0i32; 4]),
        gpu.upload(&[0f32; 4]),
    );
    let mut y = x.clone();
    y[64..96].iter_mut().for_each(|v| *v = 1.0); // warp 2: all positive
    y[96..128].iter_mut().for_each(|v| *v = -1.0); // warp 3: none
    let dy = gpu.upload(&y);
    launch(
        &mut gpu,
        m,
        "votes",
        LaunchConfig::linear(1, 128),
        &[
            Arg::Ptr(dy),
            Arg::Ptr(ballot),
            Arg::Ptr(any_all),
            Arg::Ptr(lane3),
        ],
    );
    let ballots: Vec<u32> = gpu.download(ballot, 4).unwrap();
    let flags: Vec<i32> = gpu.download(any_all, 4).unwrap();
    let lanes: Vec<f32> = gpu.download(lane3, 4).unwrap();
    for w in 0..4 {
        let want = (0..32).fold(0u32, |b, l| b | (((y[w * 32 + l] > 0.0) as u32) << l));
        assert_eq!(ballots[w], want, "warp {w}");
        assert_eq!(
            flags[w],
            (want != 0) as i32 * 2 + (want == u32::MAX) as i32,
            "warp {w}"
        );
        assert_eq!(lanes[w], y[w * 32 + 3], "warp {w}");
    }
}

#[test]
fn atomics_count_and_sum() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let x: Vec<f32> = (0..3000).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let (dx, count, sum) = (gpu.upload(&x), gpu.upload(&[0u32]), gpu.upload(&[0f32]));
    launch(
        &mut gpu,
        m,
        "atomic_count",
        LaunchConfig::linear(3, 1024),
        &[Arg::Ptr(dx), Arg::Ptr(count), Arg::Ptr(sum), Arg::I32(3000)],
    );
    let positives: Vec<f32> = x.iter().copied().filter(|&v| v > 0.0).collect();
    assert_eq!(
        gpu.download::<u32>(count, 1).unwrap()[0],
        positives.len() as u32
    );
    assert_eq!(
        gpu.download::<f32>(sum, 1).unwrap()[0],
        positives.iter().sum::<f32>()
    );
    assert_eq!(
        gpu.launches.last().unwrap().counters.atomics,
        2 * positives.len() as u64
    );
}

#[test]
fn divergent_loops_give_each_thread_its_own_answer() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let n = 300;
    let (steps, odd) = (gpu.upload(&vec![-1i32; n]), gpu.upload(&vec![-1i32; n]));
    launch(
        &mut gpu,
        m,
        "collatz",
        LaunchConfig::linear(3, 128),
        &[Arg::Ptr(steps), Arg::Ptr(odd), Arg::I32(n as i32)],
    );
    let (s, o): (Vec<i32>, Vec<i32>) = (
        gpu.download(steps, n).unwrap(),
        gpu.download(odd, n).unwrap(),
    );
    for i in 0..n {
        let (mut v, mut want_s, mut want_o) = (i as u32 + 1, 0, 0);
        while v != 1 {
            if v % 2 == 1 {
                v = 3 * v + 1;
                want_o += 1;
            } else {
                v /= 2;
            }
            want_s += 1;
        }
        assert_eq!((s[i], o[i]), (want_s, want_o), "thread {i}");
    }
    // Lockstep warps issue more warp instructions than a warp's longest thread alone would.
    let c = &gpu.launches.last().unwrap().counters;
    assert!(c.thread_instructions < 32 * c.warp_instructions);
}

#[test]
fn dynamic_shared_memory_is_sized_by_the_launch() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let (dx, dy) = (gpu.upload(&x), gpu.upload(&[0f32; 256]));
    let cfg = LaunchConfig {
        grid: [2, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 128 * 4,
    };
    launch(
        &mut gpu,
        m,
        "reverse_blocks",
        cfg,
        &[Arg::Ptr(dx), Arg::Ptr(dy)],
    );
    let y: Vec<f32> = gpu.download(dy, 256).unwrap();
    for i in 0..256 {
        assert_eq!(y[i], x[(i / 128) * 128 + 127 - i % 128]);
    }
    // Too little dynamic shared memory for the block: a fault naming the shared access.
    let cfg = LaunchConfig {
        shared_bytes: 64 * 4,
        ..cfg
    };
    let err = gpu
        .launch(m, "reverse_blocks", cfg, &[Arg::Ptr(dx), Arg::Ptr(dy)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("shared memory, which has 256 bytes"), "{err}");
    // Over sm_90's 48 KiB without opting in: refused before it runs.
    let cfg = LaunchConfig {
        shared_bytes: 64 * 1024,
        ..cfg
    };
    let err = gpu
        .launch(m, "reverse_blocks", cfg, &[Arg::Ptr(dx), Arg::Ptr(dy)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("dynamic shared memory"), "{err}");
}

#[test]
fn bf16_and_f16_round_to_nearest_even_as_the_half_crate_does() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let mut x = values(2000, 31, 300.0);
    x.extend([
        f32::INFINITY,
        -0.0,
        1e-40,
        65520.0,
        3.0e38,
        f32::from_bits(0x3f80_8000),
    ]);
    let n = x.len();
    let (dx, bf, h) = (
        gpu.upload(&x),
        gpu.upload(&vec![0f32; n]),
        gpu.upload(&vec![0f32; n]),
    );
    launch(
        &mut gpu,
        m,
        "half_round_trips",
        LaunchConfig::linear(n.div_ceil(256) as u32, 256),
        &[Arg::Ptr(dx), Arg::Ptr(bf), Arg::Ptr(h), Arg::I32(n as i32)],
    );
    let (bf, h): (Vec<f32>, Vec<f32>) = (gpu.download(bf, n).unwrap(), gpu.download(h, n).unwrap());
    for i in 0..n {
        assert_eq!(
            bf[i].to_bits(),
            half::bf16::from_f32(x[i]).to_f32().to_bits(),
            "bf16 of {}",
            x[i]
        );
        assert_eq!(
            h[i].to_bits(),
            half::f16::from_f32(x[i]).to_f32().to_bits(),
            "f16 of {}",
            x[i]
        );
    }
}

#[test]
fn directed_roundings_land_on_the_right_side_of_the_exact_value() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let tiny = f32::from_bits(0x3000_0000); // 2^-31: far below half an ulp of 1
    let (a, b, c) = (
        vec![1.0f32, -1.0, 1.1, 0.3],
        vec![1.0f32, 1.0, 3.0, 0.7],
        vec![tiny, tiny, -tiny, 0.1],
    );
    let n = a.len();
    let (da, db, dc) = (gpu.upload(&a), gpu.upload(&b), gpu.upload(&c));
    let (out, ints) = (
        gpu.upload(&vec![0f32; 10 * n]),
        gpu.upload(&vec![0i32; 4 * n]),
    );
    launch(
        &mut gpu,
        m,
        "directed",
        LaunchConfig::linear(1, 32),
        &[
            Arg::Ptr(da),
            Arg::Ptr(db),
            Arg::Ptr(dc),
            Arg::Ptr(out),
            Arg::Ptr(ints),
            Arg::I32(n as i32),
        ],
    );
    let o: Vec<f32> = gpu.download(out, 10 * n).unwrap();
    let k: Vec<i32> = gpu.download(ints, 4 * n).unwrap();
    // 1*1 + 2^-31: down 1, up next above 1, toward zero 1, nearest 1.
    assert_eq!(&o[0..4], &[1.0, 1.0f32.next_up(), 1.0, 1.0]);
    // -1*1 + 2^-31: down -1, up the next above -1, toward zero the same.
    assert_eq!(
        &o[10..14],
        &[-1.0, (-1.0f32).next_up(), (-1.0f32).next_up(), -1.0]
    );
    // Each directed result brackets the exact value, one ulp apart or equal, for every op.
    for i in 0..n {
        let exact = [
            a[i] as f64 * b[i] as f64 + c[i] as f64,
            a[i] as f64 + c[i] as f64,
            a[i] as f64 * b[i] as f64,
            a[i] as f64 / b[i] as f64,
        ];
        let pairs = [
            (0, 1, exact[0]),
            (4, 5, exact[1]),
            (6, 7, exact[2]),
            (8, 9, exact[3]),
        ];
        for (down, up, e) in pairs {
            let (d, u) = (o[10 * i + down], o[10 * i + up]);
            assert!(
                (d as f64) <= e && e <= u as f64,
                "row {i}: {d} <= {e} <= {u}"
            );
            assert!(
                d == u || d.next_up() == u,
                "row {i}: {d} and {u} are not neighbours"
            );
        }
        let x = a[i] * 4.0;
        assert_eq!(
            &k[4 * i..4 * i + 4],
            &[
                x.round_ties_even() as i32,
                x.floor() as i32,
                x.ceil() as i32,
                x.trunc() as i32
            ]
        );
    }
}

#[test]
fn a_read_past_an_allocation_stops_the_kernel_naming_thread_address_and_allocation() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let (dx, dy) = (gpu.upload(&[1f32; 100]), gpu.upload(&[0f32; 100]));
    let err = gpu
        .launch(
            m,
            "reads_past_end",
            LaunchConfig::linear(1, 128),
            &[Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(100)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kernel reads_past_end: thread [100, 0, 0] of block [0, 0, 0]"),
        "{err}"
    );
    assert!(
        err.contains("read of 4 bytes") && err.contains("0 bytes past the end of allocation #1"),
        "{err}"
    );
    // A freed allocation: use after free, named as such.
    gpu.free(dx).unwrap();
    let err = gpu
        .launch(
            m,
            "reads_past_end",
            LaunchConfig::linear(1, 32),
            &[Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(10)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("already freed"), "{err}");
}

#[test]
fn a_barrier_in_divergent_code_and_a_shuffle_with_exited_lanes_are_reported() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let x: Vec<f32> = (0..64)
        .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
        .collect();
    let dx = gpu.upload(&x);
    let err = gpu
        .launch(
            m,
            "divergent_barrier",
            LaunchConfig::linear(1, 64),
            &[Arg::Ptr(dx)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("different bar.sync"), "{err}");
    let err = gpu
        .launch(
            m,
            "shuffle_after_exit",
            LaunchConfig::linear(1, 32),
            &[Arg::Ptr(dx)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("not here"), "{err}");
}

#[test]
fn launches_outside_sm90_limits_or_with_wrong_arguments_are_refused() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let (dx, dy) = (gpu.upload(&[1f32; 4]), gpu.upload(&[0f32; 4]));
    let args = [Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(4)];
    let err = gpu
        .launch(m, "reads_past_end", LaunchConfig::linear(1, 2048), &args)
        .unwrap_err()
        .to_string();
    assert!(err.contains("over sm_90's"), "{err}");
    let cfg = LaunchConfig {
        grid: [1, 70_000, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
    };
    assert!(gpu.launch(m, "reads_past_end", cfg, &args).is_err());
    // Two arguments swapped where their sizes differ (n before a pointer): refused.
    let swapped = [Arg::Ptr(dx), Arg::I32(4), Arg::Ptr(dy)];
    let err = gpu
        .launch(m, "reads_past_end", LaunchConfig::linear(1, 32), &swapped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("takes 3 parameters of [8, 8, 4] bytes, the launch passed 3 of [8, 4, 8]"),
        "{err}"
    );
    let err = gpu
        .launch(m, "reads_past_end", LaunchConfig::linear(1, 32), &args[..2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes 3 parameters"), "{err}");
}

#[test]
fn global_memory_is_counted_in_distinct_sectors_per_warp_access_and_the_bytes_used_of_them() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let x = gpu.upload(&vec![1f32; 64 * 32]);
    let y = gpu.upload(&[0f32; 64]);
    let mut per_stride = Vec::new();
    for stride in [0, 1, 2, 8, 32] {
        launch(
            &mut gpu,
            m,
            "gather_strided",
            LaunchConfig::linear(2, 32),
            &[Arg::Ptr(x), Arg::Ptr(y), Arg::I32(stride)],
        );
        let c = gpu.launches.last().unwrap().counters.clone();
        per_stride.push((
            (c.sectors_read, c.bytes_read),
            (c.sectors_written, c.bytes_written),
            c.global_loads,
            c.global_stores,
        ));
    }
    // Two warps; each writes 128 contiguous bytes (4 sectors, all of their bytes) and reads 32
    // floats `stride` apart: at stride 0 every lane reads one float (one sector, 4 bytes of it
    // used), 4 sectors when contiguous, 8 at stride 2 (half of each used), one sector per lane
    // from stride 8 on (an eighth).
    let written = (8, 256);
    assert_eq!(
        per_stride,
        vec![
            ((2, 8), written, 2, 2),
            ((8, 256), written, 2, 2),
            ((16, 256), written, 2, 2),
            ((64, 256), written, 2, 2),
            ((64, 256), written, 2, 2)
        ]
    );
}

#[test]
fn packed_bf16x2_and_f16x2_arithmetic_rounds_each_half_once() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let n = 300;
    let (x, y) = (values(2 * n, 41, 8.0), values(2 * n, 42, 8.0));
    let bf = |v: &[f32]| {
        v.iter()
            .map(|&f| half::bf16::from_f32(f))
            .collect::<Vec<_>>()
    };
    let hf = |v: &[f32]| {
        v.iter()
            .map(|&f| half::f16::from_f32(f))
            .collect::<Vec<_>>()
    };
    let (a, b, c, d) = (bf(&x), bf(&y), hf(&x), hf(&y));
    let (da, db, dc, dd) = (
        gpu.upload(&a),
        gpu.upload(&b),
        gpu.upload(&c),
        gpu.upload(&d),
    );
    let (obf, oh) = (
        gpu.upload(&vec![0u16; 6 * n]),
        gpu.upload(&vec![0u16; 6 * n]),
    );
    let args = [
        Arg::Ptr(da),
        Arg::Ptr(db),
        Arg::Ptr(obf),
        Arg::Ptr(dc),
        Arg::Ptr(dd),
        Arg::Ptr(oh),
        Arg::I32(n as i32),
    ];
    launch(
        &mut gpu,
        m,
        "packed_pairs",
        LaunchConfig::linear(2, 256),
        &args,
    );
    let got_bf: Vec<half::bf16> = gpu.download(obf, 6 * n).unwrap();
    let got_h: Vec<half::f16> = gpu.download(oh, 6 * n).unwrap();
    for i in 0..n {
        for lane in 0..2 {
            let k = 2 * i + lane;
            let (p, q) = (a[k].to_f64(), b[k].to_f64());
            let want = [p + q, p * q, p.mul_add(q, p)].map(half::bf16::from_f64);
            for (op, w) in want.iter().enumerate() {
                assert_eq!(
                    got_bf[6 * i + 2 * op + lane],
                    *w,
                    "bf16x2 op {op}, pair {i}, lane {lane}"
                );
            }
            let (p, q) = (c[k].to_f64(), d[k].to_f64());
            let want = [p + q, p * q, p.mul_add(q, p)].map(half::f16::from_f64);
            for (op, w) in want.iter().enumerate() {
                assert_eq!(
                    got_h[6 * i + 2 * op + lane],
                    *w,
                    "f16x2 op {op}, pair {i}, lane {lane}"
                );
            }
        }
    }
}

#[test]
fn set_writes_a_comparison_as_a_float_or_a_mask() {
    let Some((mut gpu, m)) = features() else {
        return;
    };
    let mut a = values(300, 41, 4.0);
    let mut b = values(300, 42, 4.0);
    // Equal pairs, and NaN on either side (every ordered comparison with it is false).
    a.extend([1.5, f32::NAN, 2.0, -0.0]);
    b.extend([1.5, 2.0, f32::NAN, 0.0]);
    let n = a.len();
    let (da, db) = (gpu.upload(&a), gpu.upload(&b));
    let (ge, lt) = (gpu.upload(&vec![7f32; n]), gpu.upload(&vec![7u32; n]));
    launch(
        &mut gpu,
        m,
        "compare_values",
        LaunchConfig::linear(n.div_ceil(256) as u32, 256),
        &[
            Arg::Ptr(da),
            Arg::Ptr(db),
            Arg::Ptr(ge),
            Arg::Ptr(lt),
            Arg::I32(n as i32),
        ],
    );
    let (ge, lt): (Vec<f32>, Vec<u32>) =
        (gpu.download(ge, n).unwrap(), gpu.download(lt, n).unwrap());
    for i in 0..n {
        let want_ge = if a[i] >= b[i] { 1.0 } else { 0.0 };
        let want_lt = if a[i] < b[i] { u32::MAX } else { 0 };
        assert_eq!((ge[i], lt[i]), (want_ge, want_lt), "{} and {}", a[i], b[i]);
    }
}
