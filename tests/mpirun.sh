# mpirun.sh: sourced by the MPI tests (tests/test_mpi*.sh): sets MPIRUN, the launcher with the flags
# this machine needs. OpenMPI refuses root without --allow-run-as-root and more ranks than cores
# without --oversubscribe; MPICH knows neither flag. Shared-memory single-copy (CMA) fails in
# containers: turn it off; keep the traffic on the loopback interface.
MPIRUN="mpirun"
if mpirun --version 2>&1 | grep -q "Open MPI"; then
    MPIRUN="mpirun --oversubscribe"
    [ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
    export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
    export OMPI_MCA_btl="self,vader,tcp" OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
    # A rank waiting in a collective yields its core: OpenMPI does so by itself only when the ranks
    # outnumber the cores, and 2 ranks on a 2-core machine beside other tests spun instead (a 20-step
    # run on 2 ranks: 1.7 s of CPU, 0.9 s with this).
    export OMPI_MCA_mpi_yield_when_idle=1
    # The byte transfer layers above (ob1 over self, vader, tcp) and nothing that probes for network
    # fabrics at start: Debian's OpenMPI also loads UCX, libfabric (OFI) and PSM, whose probing took
    # half of every launch here (mpirun -np 2 of a 2-step run: 0.35 s, 0.17 s without them)
    export OMPI_MCA_pml=ob1 OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx
fi
