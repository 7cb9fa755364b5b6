#!/bin/bash
# Self-time of a perf.data by category (symbol substrings), percent of samples.
f=$1
perf report -i "$f" --stdio --no-children --sort sym -g none --percent-limit 0 2>/dev/null \
 | awk '/^ +[0-9.]+%/ {p=$1; sub("%","",p); $1=""; s=$0;
   c="other";
   if (s ~ /sha2|sha256|Sha256|compress256/) c="sha256";
   else if (s ~ /chacha|ChaCha|poly1305|Poly1305/) c="noise chacha20poly1305";
   else if (s ~ /yamux/) c="yamux";
   else if (s ~ /inflate|zlib|flate|crc32|adler/) c="gzip inflate";
   else if (s ~ /memcpy|memmove|memset/) c="memcpy/memset";
   else if (s ~ /malloc|free|realloc|cfree|_int_|alloc::/) c="malloc/free";
   else if (s ~ /tracing|Subscriber|EnvFilter|Callsite/) c="tracing";
   else if (s ~ /ed25519|curve25519|Scalar|EdwardsPoint|FieldElement/) c="ed25519";
   else if (s ~ /\[k\]/) c="kernel";
   else if (s ~ /tar::|unpack|Archive/) c="tar";
   else if (s ~ /tokio|mio|epoll|futures/) c="tokio/futures";
   else if (s ~ /libp2p|multistream|noise/) c="libp2p other";
   sum[c]+=p }
   END { for (k in sum) printf "%6.1f%%  %s\n", sum[k], k }' | sort -rn
