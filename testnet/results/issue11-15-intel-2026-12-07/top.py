import os, sys, collections
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../issue11-15-dir-2026-12-07/cat.py")).read().split("cats=collections.Counter()")[0])
markers=[("import","edgeswarm_node::import::"),("store-write","write_chunk_blocking"),("store-read","read_chunk_blocking"),
("store-other","edgeswarm_node::store::"),
("libp2p-conn","libp2p_swarm::connection::Connection"),("swarm-task","SwarmTask"),("swarm-poll","libp2p_swarm::Swarm"),("exchange-serve","exchange::serve"),
("exchange-session","exchange::session"),("exchange-download","exchange::download"),("exchange-other","exchange::"),("gossip","daemon::gossip"),("daemon","edgeswarm_node::daemon"),("api","edgeswarm_node::api"),
("tokio-blocking","tokio::runtime::blocking"),("tokio","tokio::runtime")]
c=collections.Counter(); n=0
for (cm,p,t),f in samples:
    if p not in nodes or not f: continue
    n+=1
    names=[x[1].split("+")[0] for x in f]
    if cm=="layer-sha256": c["layer-sha256 thread"]+=1; continue
    for lab,m in markers:
        if any(m in nm for nm in names): c[lab]+=1; break
    else:
        k=f[0][0].startswith("ffffffff")
        s=set(names)
        if s & {"net_rx_action","process_backlog","__netif_receive_skb"}: c["k softirq (no user frame)"]+=1
        else: c[("k " if k else "u ")+"unattributed "+names[-1][:40]]+=1
print("samples",n)
for k,v in c.most_common(30): print(f"{v:6} {v/len(nodes)/RATE:6.3f}s/node {k}")
