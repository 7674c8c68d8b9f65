#pragma once
/// \file
/// The Communicator (parallel/communicator.hpp) of the MPI world: the ranks that `mpirun -np R`
/// started. Not part of the header-only core: only a program built with MPI includes it (CMake:
/// HGAD_ENABLE_MPI, the target hgad::mpi, which links MPI::MPI_CXX).
///
///     int main(int argc, char** argv) {
///       hgad::MpiCommunicator world(&argc, &argv);   // MPI_Init; MPI_Finalize at the end
///       hgad::FitOptions<float> options;
///       options.communicator = &world;               // data-parallel over the world's ranks
///       model.fit(features, labels, options);
///       if (world.rank() == 0) model.save("model.hgad");
///     }
///
/// Failure: an MPI error is a PeerFailure naming the call and MPI's own message. A rank whose
/// work fails (fail()) prints its reason and calls MPI_Abort, which ends every rank of the job;
/// a rank that dies is noticed by mpirun, which ends the others. (Open MPI without its fault-
/// tolerance extension cannot let the survivors continue.)

// Only MPI's C interface is used; the deprecated C++ bindings (and their warnings) stay out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../detail/check.hpp"
#include "communicator.hpp"

namespace hgad {

/// MPI_COMM_WORLD as a Communicator (a duplicate of it, so hgad's messages never meet the
/// program's own).
class MpiCommunicator final : public Communicator {
 public:
  /// Initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI; OpenMP threads compute)
  /// unless the program already did; MPI_Finalize runs in the destructor if this object initialised
  /// it.
  explicit MpiCommunicator(int* argc = nullptr, char*** argv = nullptr) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      require(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      m_owns_mpi = true;
    }
    require(MPI_Comm_dup(MPI_COMM_WORLD, &m_comm), "MPI_Comm_dup");
    require(MPI_Comm_set_errhandler(m_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    require(MPI_Comm_rank(m_comm, &m_rank), "MPI_Comm_rank");
    require(MPI_Comm_size(m_comm, &m_size), "MPI_Comm_size");
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (finalised) return;
    MPI_Comm_free(&m_comm);
    if (m_owns_mpi) MPI_Finalize();
  }

  /// Whether this process was started by an MPI launcher (mpirun, srun): the environment of
  /// Open MPI, PMIx or PMI names its world. A program calls MPI only then, so that it runs
  /// without a launcher exactly as one built without MPI.
  static bool launched() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
      if (std::getenv(name) != nullptr) return true;
    return false;
  }

  int rank() const override { return m_rank; }
  int size() const override { return m_size; }

  void all_gather_bytes(const void* send, std::size_t bytes, void* recv) override {
    check(bytes <= std::size_t(INT_MAX), "MpiCommunicator::all_gather_bytes: ", bytes,
          " bytes per rank exceed MPI's int count (", INT_MAX, ")");
    require(MPI_Allgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, m_comm),
            "MPI_Allgather");
  }

  void all_to_all_bytes(const void* send, std::size_t bytes, void* recv) override {
    check(bytes <= std::size_t(INT_MAX), "MpiCommunicator::all_to_all_bytes: ", bytes,
          " bytes per rank exceed MPI's int count (", INT_MAX, ")");
    require(MPI_Alltoall(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, m_comm),
            "MPI_Alltoall");
  }

  void broadcast_bytes(void* data, std::size_t bytes, int root) override {
    check(root >= 0 && root < m_size, "MpiCommunicator::broadcast_bytes: root ", root, " of ",
          m_size, " ranks");
    auto* at = static_cast<char*>(data);
    while (bytes > 0) {  // in pieces of at most INT_MAX bytes, MPI's count
      const std::size_t piece = bytes < std::size_t(INT_MAX) ? bytes : std::size_t(INT_MAX);
      require(MPI_Bcast(at, int(piece), MPI_BYTE, root, m_comm), "MPI_Bcast");
      at += piece;
      bytes -= piece;
    }
  }

  /// Prints "hgad: rank r of R failed: reason; ending the MPI job" to standard error and ends
  /// every rank (MPI_Abort with exit status 1).
  void fail(const std::string& reason) noexcept override {
    std::fprintf(stderr, "hgad: rank %d of %d failed: %s; ending the MPI job\n", m_rank, m_size,
                 reason.c_str());
    std::fflush(stderr);
    MPI_Abort(m_comm, 1);
  }

 private:
  void require(int code, const char* call) const {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw PeerFailure(detail::concat("rank ", m_rank, ": ", call,
                                     " failed: ", std::string(text, std::size_t(length))));
  }

  MPI_Comm m_comm = MPI_COMM_NULL;
  int m_rank = 0;
  int m_size = 1;
  bool m_owns_mpi = false;
};

}  // namespace hgad
