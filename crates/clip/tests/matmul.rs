//! `cpu_matmul_f32`, the CPU encoder's f32 product as the crate exports it.

/// `dst = a · b` against a plain f64 triple loop, within the error bound of any order of f32
/// summation, on shapes that are not multiples of any kernel's tile (and wide enough to be
/// split among threads); `dst` starts as NaN, so a product that read it instead of storing
/// over it fails.
#[test]
fn cpu_matmul_f32_stores_the_product() {
    for (m, n, k) in [(1, 1, 1), (7, 5, 3), (33, 300, 65), (257, 129, 31)] {
        let value =
            |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0 - 2.0;
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
        let mut dst = vec![f32::NAN; m * n];
        aesthete_clip::cpu_matmul_f32(&mut dst, &a, &b, (m, n, k));
        for i in 0..m {
            for j in 0..n {
                let products = (0..k).map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]));
                let want = products.clone().sum::<f64>();
                let bound =
                    k as f64 * f64::from(f32::EPSILON) * products.map(f64::abs).sum::<f64>();
                let diff = (f64::from(dst[i * n + j]) - want).abs();
                assert!(diff <= bound, "{m}x{n}x{k} at ({i}, {j}): {diff} > {bound}");
            }
        }
    }
}

/// A slice of the wrong length is refused before anything is computed.
#[test]
#[should_panic]
fn cpu_matmul_f32_refuses_a_short_operand() {
    let mut dst = vec![0f32; 4];
    aesthete_clip::cpu_matmul_f32(&mut dst, &[1.0; 4], &[1.0; 3], (2, 2, 2));
}
