#!/bin/bash
# mk.sh LAYERFILE OUT.tar : docker-save archive with one layer
set -e
L=$1; OUT=$2; D=$(cat diffid)
rm -rf arch && mkdir arch && ln -s $PWD/$L arch/layer
cat > arch/config.json <<J
{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:$D"]}}
J
C=$(sha256sum arch/config.json | cut -d' ' -f1); mv arch/config.json arch/$C.json
echo "[{\"Config\":\"$C.json\",\"RepoTags\":[\"dltest:latest\"],\"Layers\":[\"layer\"]}]" > arch/manifest.json
tar -C arch -chf $OUT .
