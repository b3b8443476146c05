mod common;
use common::*;
use lb_common::Reason;
use lb_userspace::testbed::{*, fixture::*};
use lb_userspace::packet::quic;

#[test]
fn probe() -> anyhow::Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let p = Pkt::udp(CLIENT_V4, VIP_V4, 40000, 443).payload(quic::short(&dcid(0, [1,2,3,4,5,6]), 32));
        let b = p.bytes();
        let (r, d) = lb.run(&b);
        println!("verdict {} moved {:?} len {} -> {}", r.verdict, d.global.nonzero(), b.len(), r.data.len());
        for n in [0usize, 1, 13, 14] {
            let res = lb.dp.test_run(&b[..n], lb.tb.ext_ifindex);
            println!("len {n}: {:?}", res.map(|r| (r.verdict, r.data.len())));
        }
        // big packet
        let big = Pkt::udp(CLIENT_V4, VIP_V4, 40000, 443).payload(quic::short(&dcid(0, [1,2,3,4,5,6]), 1600)).bytes();
        let (r, d) = lb.run(&big);
        println!("big nocache: verdict {} moved {:?}", r.verdict, d.global.nonzero());
        lb.fib_cache(1_000_000_000);
        let (r, d) = lb.run(&b);
        println!("small cache: verdict {} moved {:?}", r.verdict, d.global.nonzero());
        let (r, d) = lb.run(&big);
        println!("big cached: verdict {} moved {:?}", r.verdict, d.global.nonzero());
        let _ = Reason::PassNotIp;
        Ok(())
    })
}
