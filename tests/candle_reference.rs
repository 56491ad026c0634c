//! candle's autograd is the reference for our hand-derived dense layers: the same network, the
//! same batch and the same optimizer steps computed both ways must agree.
//!
//! Tolerances: gradients within 1e-5 absolute + 1e-4 relative (both sides compute in f32 with
//! different summation orders); after a 40-step Adam stage, weights within 1e-4 absolute.

use candle_core::{Device, Tensor, Var};
use sisa::model::{Activation, Network, Workspace};
use sisa::train::rng::SplitMix64;

fn batch(b: usize, d: usize, classes: u32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let x = (0..b * d).map(|_| rng.next_symmetric()).collect();
    let y = (0..b)
        .map(|_| (rng.next_u64() % classes as u64) as u32)
        .collect();
    (x, y)
}

/// Mean cross-entropy of `net` (as candle variables) on the batch.
fn candle_loss(vars: &[(Var, Var)], act: Activation, x: &Tensor, onehot: &Tensor) -> Tensor {
    let mut h = x.clone();
    for (i, (w, b)) in vars.iter().enumerate() {
        h = h
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        if i + 1 < vars.len() {
            h = match act {
                Activation::Tanh => h.tanh().unwrap(),
                Activation::Relu => h.relu().unwrap(),
            };
        }
    }
    let max = h.max_keepdim(1).unwrap();
    let shifted = h.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .log()
        .unwrap();
    let logp = shifted.broadcast_sub(&lse).unwrap();
    let b = x.dims()[0] as f64;
    (logp * onehot)
        .unwrap()
        .sum_all()
        .unwrap()
        .affine(-1.0 / b, 0.0)
        .unwrap()
}

fn to_vars(net: &Network) -> Vec<(Var, Var)> {
    net.dense_layers()
        .into_iter()
        .map(|l| {
            let w = Tensor::from_vec(l.w.clone(), (l.inputs, l.outputs), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(l.b.clone(), (1, l.outputs), &Device::Cpu).unwrap();
            (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap())
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn inputs(x: &[f32], y: &[u32], b: usize, d: usize, classes: usize) -> (Tensor, Tensor) {
    let xt = Tensor::from_vec(x.to_vec(), (b, d), &Device::Cpu).unwrap();
    let mut oh = vec![0f32; b * classes];
    for (r, &l) in y.iter().enumerate() {
        oh[r * classes + l as usize] = 1.0;
    }
    (
        xt,
        Tensor::from_vec(oh, (b, classes), &Device::Cpu).unwrap(),
    )
}

#[test]
fn gradients_agree_with_candle_autograd() {
    for act in [Activation::Tanh, Activation::Relu] {
        for dims in [vec![20, 16, 7], vec![30, 5], vec![12, 10, 8, 4]] {
            let net = Network::mlp(&dims, act, 3);
            let b = 9;
            let classes = *dims.last().unwrap();
            let (x, y) = batch(b, dims[0], classes as u32, 17);
            let mut ws = Workspace::new(&net, b);
            let ours = net.gradients(&mut ws, &x, &y, b, 0) / b as f64;
            let ours_grads: Vec<&Vec<f32>> = ws.grads().collect();
            let vars = to_vars(&net);
            let (xt, oh) = inputs(&x, &y, b, dims[0], classes);
            let loss = candle_loss(&vars, act, &xt, &oh);
            let theirs = loss.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (ours - theirs).abs() < 1e-5 * (1.0 + theirs.abs()),
                "{act:?} {dims:?}: loss {ours} vs {theirs}"
            );
            let grads = loss.backward().unwrap();
            for (l, (w, bias)) in vars.iter().enumerate() {
                let gw = flat(grads.get(w.as_tensor()).unwrap());
                let gb = flat(grads.get(bias.as_tensor()).unwrap());
                for (a, c) in ours_grads[2 * l]
                    .iter()
                    .zip(&gw)
                    .chain(ours_grads[2 * l + 1].iter().zip(&gb))
                {
                    assert!(
                        (a - c).abs() <= 1e-5 + 1e-4 * c.abs(),
                        "{act:?} {dims:?} layer {l}: {a} vs {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn an_adam_stage_agrees_with_candle() {
    let dims = [24, 32, 6];
    let mut net = Network::mlp(&dims, Activation::Tanh, 5);
    let vars = to_vars(&net);
    let (lr, wd, b1, b2, eps) = (0.01f64, 0.01f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut opt = sisa::train::optim::Optimizer::new(
        sisa::model::OptimizerKind::Adam,
        lr as f32,
        0.9,
        wd as f32,
        net.params().map(Vec::len).collect::<Vec<_>>().into_iter(),
    );
    let mut moments: Vec<(Tensor, Tensor)> = vars
        .iter()
        .flat_map(|(w, b)| [w, b])
        .map(|v| {
            (
                v.as_tensor().zeros_like().unwrap(),
                v.as_tensor().zeros_like().unwrap(),
            )
        })
        .collect();
    let b = 16;
    let mut ws = Workspace::new(&net, b);
    for step in 1..=40 {
        let (x, y) = batch(b, 24, 6, 100 + step);
        net.gradients(&mut ws, &x, &y, b, step);
        opt.update(net.params_mut(), ws.grads());
        // The same AdamW update over candle tensors, from candle's gradients.
        let (xt, oh) = inputs(&x, &y, b, 24, 6);
        let grads = candle_loss(&vars, Activation::Tanh, &xt, &oh)
            .backward()
            .unwrap();
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for (v, (m, s)) in vars
            .iter()
            .flat_map(|(w, b)| [w, b])
            .zip(moments.iter_mut())
        {
            let g = grads.get(v.as_tensor()).unwrap();
            *m = ((&*m * b1).unwrap() + (g * (1.0 - b1)).unwrap()).unwrap();
            *s = ((&*s * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let denom = ((s.sqrt().unwrap() / bc2.sqrt()).unwrap() + eps).unwrap();
            let update = ((&*m / denom).unwrap() * (lr / bc1)).unwrap();
            let decayed = (v.as_tensor() * (1.0 - lr * wd)).unwrap();
            v.set(&(decayed - update).unwrap()).unwrap();
        }
    }
    let mut worst = 0f32;
    for (l, (w, bias)) in vars.iter().enumerate() {
        let layer = net.dense_layers()[l];
        for (a, c) in layer.w.iter().zip(flat(w.as_tensor()).iter()) {
            worst = worst.max((a - c).abs());
        }
        for (a, c) in layer.b.iter().zip(flat(bias.as_tensor()).iter()) {
            worst = worst.max((a - c).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "after 40 Adam steps the weights differ by up to {worst}"
    );
}
