//! Seeded k-means with k-means++ initialisation, on L2-normalised embeddings (squared Euclidean
//! distance, which orders like cosine there). Written here rather than taken from a crate because
//! the docid tree needs exact, reproducible behaviour (one seed, one answer, on every machine) and
//! a guaranteed split of every oversized cluster; it is ~100 lines over plain slices.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Squared Euclidean distance.
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the centre nearest to `p` (the lowest index on ties).
fn nearest(p: &[f32], centres: &[Vec<f32>]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (c, centre) in centres.iter().enumerate() {
        let d = dist2(p, centre);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// k-means++: the first centre uniformly, each next one with probability proportional to the
/// squared distance to the nearest centre chosen so far. Stops early when every point sits on a
/// centre (fewer distinct points than `k`).
fn init_plus_plus(points: &[&[f32]], k: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    let mut centres = vec![points[rng.random_range(0..points.len())].to_vec()];
    let mut d: Vec<f32> = points.iter().map(|p| dist2(p, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d.iter().map(|&x| x as f64).sum();
        if total <= 0.0 {
            break;
        }
        let mut target = rng.random::<f64>() * total;
        let mut pick = points.len() - 1;
        for (i, &x) in d.iter().enumerate() {
            target -= x as f64;
            if target <= 0.0 && x > 0.0 {
                pick = i;
                break;
            }
        }
        let c = points[pick].to_vec();
        for (i, p) in points.iter().enumerate() {
            d[i] = d[i].min(dist2(p, &c));
        }
        centres.push(c);
    }
    centres
}

/// Clusters `points` into at most `k` groups. Returns a group per point, numbered `0..groups` in
/// order of each group's first point, so the numbering depends only on the data and the seed.
/// Every group is non-empty; when the points cannot be told apart (fewer distinct points than
/// needed) they are split by order into equal parts, so a caller that needs a split always gets
/// one for more than one point.
pub fn kmeans(points: &[&[f32]], k: usize, seed: u64, max_iterations: usize) -> Vec<usize> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let k = k.clamp(1, n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut centres = init_plus_plus(points, k, &mut rng);
    let dim = points[0].len();
    let mut assign: Vec<usize> = points.iter().map(|p| nearest(p, &centres).0).collect();
    for _ in 0..max_iterations {
        // Update: each centre moves to the mean of its points; an emptied centre takes the point
        // farthest from its own centre, which keeps k groups alive.
        let mut sums = vec![vec![0f64; dim]; centres.len()];
        let mut counts = vec![0usize; centres.len()];
        for (p, &a) in points.iter().zip(&assign) {
            counts[a] += 1;
            for (s, &x) in sums[a].iter_mut().zip(p.iter()) {
                *s += x as f64;
            }
        }
        for c in 0..centres.len() {
            if counts[c] > 0 {
                centres[c] = sums[c]
                    .iter()
                    .map(|&s| (s / counts[c] as f64) as f32)
                    .collect();
            } else {
                let far = (0..n)
                    .max_by(|&a, &b| {
                        dist2(points[a], &centres[assign[a]])
                            .total_cmp(&dist2(points[b], &centres[assign[b]]))
                    })
                    .unwrap_or(0);
                centres[c] = points[far].to_vec();
                assign[far] = c;
            }
        }
        let next: Vec<usize> = points.iter().map(|p| nearest(p, &centres).0).collect();
        if next == assign {
            break;
        }
        assign = next;
    }
    let groups = renumber(&assign);
    let distinct = groups.iter().max().map_or(0, |&g| g + 1);
    if distinct < 2 && n > 1 && k > 1 {
        let parts = k.min(n);
        return (0..n).map(|i| i * parts / n).collect();
    }
    groups
}

/// Renumbers group labels by first appearance, dropping unused labels.
fn renumber(assign: &[usize]) -> Vec<usize> {
    let mut map = std::collections::HashMap::new();
    assign
        .iter()
        .map(|&a| {
            let next = map.len();
            *map.entry(a).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Vec<Vec<f32>> {
        // Three tight groups around three axes.
        let mut out = Vec::new();
        for axis in 0..3 {
            for j in 0..5 {
                let mut v = vec![0.0f32; 3];
                v[axis] = 1.0;
                v[(axis + 1) % 3] = 0.01 * j as f32;
                out.push(v);
            }
        }
        out
    }

    #[test]
    fn finds_separated_groups_and_is_deterministic() {
        let pts = blobs();
        let refs: Vec<&[f32]> = pts.iter().map(|v| v.as_slice()).collect();
        let a = kmeans(&refs, 3, 7, 50);
        assert_eq!(a, kmeans(&refs, 3, 7, 50));
        for g in 0..3 {
            let first = a[g * 5];
            assert!(a[g * 5..g * 5 + 5].iter().all(|&x| x == first), "{a:?}");
        }
        let mut firsts = vec![a[0], a[5], a[10]];
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "{a:?}");
        assert_eq!(a[0], 0, "numbered by first appearance");
    }

    #[test]
    fn identical_points_are_still_split() {
        let pts = vec![vec![1.0f32, 0.0]; 7];
        let refs: Vec<&[f32]> = pts.iter().map(|v| v.as_slice()).collect();
        let a = kmeans(&refs, 3, 1, 10);
        let groups = a.iter().max().unwrap() + 1;
        assert_eq!(groups, 3);
        for g in 0..groups {
            assert!(a.contains(&g));
        }
    }

    #[test]
    fn more_groups_than_points_gives_one_per_point() {
        let pts = [vec![0.0f32, 1.0], vec![1.0, 0.0]];
        let refs: Vec<&[f32]> = pts.iter().map(|v| v.as_slice()).collect();
        let mut a = kmeans(&refs, 10, 3, 10);
        a.sort();
        assert_eq!(a, vec![0, 1]);
    }
}
