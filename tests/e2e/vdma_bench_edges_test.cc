// vdma-bench at its edges: usage errors found before anything is spawned,
// signals, a back-end that dies mid-run, --backend-arg overrides and the
// rounds of --repeat, each against the real programs.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include "e2e_util.h"

namespace vdma::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// vdma-bench started in the background with TMPDIR pointing at a directory
// of its own, so whatever it leaves behind (a disk, a socket) is seen.
class BenchProcess {
 public:
  BenchProcess(const ScratchDir& dir, const std::vector<std::string>& args)
      : tmp_(dir.file("tmp")), out_(dir.file("bench.out")), err_(dir.file("bench.err")) {
    std::filesystem::create_directory(tmp_);
    const std::string program = vdma_bench_binary();
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(program.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int in = ::open("/dev/null", O_RDONLY);
      const int out = ::open(out_.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
      const int err = ::open(err_.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
      if (in < 0 || out < 0 || err < 0) ::_exit(127);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::setenv("TMPDIR", tmp_.c_str(), 1);
      ::execv(program.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ~BenchProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)wait();
    }
  }
  BenchProcess(const BenchProcess&) = delete;
  BenchProcess& operator=(const BenchProcess&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] const std::string& tmp() const { return tmp_; }
  [[nodiscard]] std::string out() const { return slurp(out_); }
  [[nodiscard]] std::string err() const { return slurp(err_); }

  // Waits until stderr holds `text`; false after `timeout` or if it ended.
  bool wait_for_err(const std::string& text, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (err().find(text) != std::string::npos) return true;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        status_ = status;
        return err().find(text) != std::string::npos;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  // The waitpid status.
  int wait() {
    if (pid_ > 0) {
      ::waitpid(pid_, &status_, 0);
      pid_ = -1;
    }
    return status_;
  }

 private:
  std::string tmp_, out_, err_;
  pid_t pid_ = -1;
  int status_ = 0;
};

// The children of `parent` (from /proc/*/stat).
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> kids;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = slurp(e.path() / "stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) {
      kids.push_back(static_cast<pid_t>(std::stoi(name)));
    }
  }
  return kids;
}

// Whether `pid` runs (a zombie nobody reaped does not count).
bool is_running(pid_t pid) {
  const std::string stat = slurp(fmt::format("/proc/{}/stat", pid));
  const size_t close = stat.rfind(')');
  return close != std::string::npos && stat.size() > close + 2 && stat[close + 2] != 'Z';
}

bool gone_within(pid_t pid, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!is_running(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename());
  return names;
}

TEST(VdmaBenchEdges, UsageErrorsExitTwoOnceBeforeAnythingIsSpawned) {
  ScratchDir dir;
  // A "back-end" that only records that it was started.
  const std::string marker = dir.file("spawned");
  const std::string fake = dir.file("fake-blk");
  std::ofstream(fake) << "#!/bin/sh\ntouch " << marker << "\n";
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"--bs", "1000"}, "--bs 1000: not a multiple of 512"},
      {{"--runtime", "0"}, "--runtime 0 without --size: the run would not end"},
      {{"--runtime", "-2"}, "--runtime -2: negative"},
      {{"--iodepth", "300"}, "--iodepth 300: above --queue-size 256 (a request takes at least one descriptor)"},
      {{"--queue-size", "100"},
       "--queue-size 100: not a power of two (a split ring needs one; --ring packed takes any size)"},
      {{"--ramp-time", "-1"}, "--ramp-time -1: negative"},
      {{"--disk-size", "4M", "--bs", "1M", "--iodepth", "8"},
       "--disk-size 4M holds 4 blocks of 1048576 bytes: fewer than --iodepth 8 x --queues 1"},
      {{"--span", "1G"}, "--span 1073741824: beyond --disk-size 64M"},
      {{"--baseline", "offset", "--mode", "bypass"}, "--baseline offset: not one of the modes run"},
      {{"--backend-arg=--blk-file=/x"},
       "--backend-arg --blk-file: vdma-bench sets the spawned back-end's --blk-file itself (use vdma-bench's "
       "--blk-file)"},
  };
  for (const auto& [args, message] : cases) {
    std::vector<std::string> argv = {"--backend", fake};
    argv.insert(argv.end(), args.begin(), args.end());
    BenchProcess b(dir, argv);
    const int status = b.wait();
    ASSERT_TRUE(WIFEXITED(status)) << message;
    EXPECT_EQ(WEXITSTATUS(status), 2) << message;
    // Said once, and nothing else.
    EXPECT_EQ(b.err(), "vdma-bench: " + message + " (see --help)\n");
    EXPECT_EQ(b.out(), "");
    EXPECT_FALSE(std::filesystem::exists(marker)) << message << ": a back-end was spawned";
    EXPECT_THAT(files_in(b.tmp()), ::testing::IsEmpty()) << message;
  }
}

TEST(VdmaBenchEdges, HelpWarnsThatTheDefaultWorkloadWrites) {
  ScratchDir dir;
  const ProgramRun r = run_program(dir, vdma_bench_binary(), {"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("WARNING: the default workload (randrw with --verify) WRITES: with --socket-path it "
                               "overwrites the disk behind that back-end"));
  for (const char* word : {"--repeat", "--ramp-time", "--seed", "--baseline", "--backend-arg=--iommu=off", "20%"}) {
    EXPECT_THAT(r.out, HasSubstr(word));
  }
}

TEST(VdmaBenchEdges, SigtermMidRunStopsTheBackEndRemovesTheDiskAndPrintsTheFinishedModes) {
  ScratchDir dir;
  BenchProcess b(dir, {"--mode", "bypass", "--mode", "iommu-lazy", "--runtime", "1", "--disk-size", "8M",
                       "--iodepth", "8", "--progress", "always"});
  ASSERT_TRUE(b.wait_for_err("mode 2/2 iommu-lazy")) << b.err();
  const std::vector<pid_t> backend = children_of(b.pid());
  ASSERT_EQ(backend.size(), 1u);
  ASSERT_EQ(::kill(b.pid(), SIGTERM), 0);
  const int status = b.wait();
  // It ends by the signal it got, once it cleaned up.
  ASSERT_TRUE(WIFSIGNALED(status)) << b.err();
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  const std::string out = b.out();
  EXPECT_THAT(out, HasSubstr("\nbypass "));
  EXPECT_THAT(out, Not(HasSubstr("\niommu-lazy ")));
  EXPECT_THAT(out, HasSubstr("stopped: interrupted by SIGTERM during iommu-lazy; the table holds the runs that "
                             "finished"));
  EXPECT_FALSE(is_running(backend[0])) << "the back-end lives on";
  EXPECT_THAT(files_in(b.tmp()), ::testing::IsEmpty()) << "no disk, no socket left";
}

TEST(VdmaBenchEdges, SigkillOfVdmaBenchTakesTheBackEndAlong) {
  ScratchDir dir;
  BenchProcess b(dir, {"--mode", "bypass", "--runtime", "60", "--disk-size", "8M", "--iodepth", "8", "--progress",
                       "always"});
  ASSERT_TRUE(b.wait_for_err("mode 1/1 bypass  measure")) << b.err();
  const std::vector<pid_t> backend = children_of(b.pid());
  ASSERT_EQ(backend.size(), 1u);
  ASSERT_EQ(::kill(b.pid(), SIGKILL), 0);
  b.wait();
  // PR_SET_PDEATHSIG: SIGTERM, which vdma-blk answers by a clean exit
  // (an AddressSanitizer build takes a moment).
  EXPECT_TRUE(gone_within(backend[0], std::chrono::seconds(20))) << "an orphaned vdma-blk lives on";
  // The disk was unlinked once vdma-blk held it; vdma-blk removed its socket.
  EXPECT_THAT(files_in(b.tmp()), ::testing::IsEmpty());
}

TEST(VdmaBenchEdges, ABackEndKilledMidRunFailsTheRunAtOnceNamingTheSignal) {
  ScratchDir dir;
  BenchProcess b(dir, {"--mode", "bypass", "--mode", "iommu-lazy", "--runtime", "60", "--disk-size", "8M",
                       "--iodepth", "8", "--progress", "always"});
  ASSERT_TRUE(b.wait_for_err("mode 1/2 bypass  measure")) << b.err();
  const std::vector<pid_t> backend = children_of(b.pid());
  ASSERT_EQ(backend.size(), 1u);
  const auto killed = Clock::now();
  ASSERT_EQ(::kill(backend[0], SIGKILL), 0);
  const int status = b.wait();
  const auto took = Clock::now() - killed;
  // Not two 30-second completion timeouts: the back-end's end is watched.
  EXPECT_LT(took, std::chrono::seconds(5));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_THAT(b.err(), HasSubstr("vdma-bench: mode bypass: the back-end " + vdma_blk_binary() +
                                 " was killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(b.out(), HasSubstr("stopped: the back-end " + vdma_blk_binary() + " was killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(b.out(), Not(HasSubstr("iommu-lazy"))) << "no mode runs after the back-end died";
  EXPECT_THAT(files_in(b.tmp()), ::testing::IsEmpty()) << "the killed back-end's socket is removed";
}

TEST(VdmaBenchEdges, BackendArgReplacesWhatVdmaBenchPassesItself) {
  ScratchDir dir;
  // vdma-bench passes --iommu on; the user's --iommu=off wins (vdma-blk
  // refuses a duplicate option), so the iommu mode finds no ACCESS_PLATFORM.
  const ProgramRun r = run_program(dir, vdma_bench_binary(),
                                   {"--backend-arg=--iommu=off", "--backend-arg=--log-level=error", "--mode", "bypass",
                                    "--mode", "iommu-strict", "--runtime", "0.2", "--disk-size", "8M", "--no-verify",
                                    "--rw", "randread"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.out, HasSubstr("iommu-strict     error: back-end does not offer ACCESS_PLATFORM"));
  EXPECT_THAT(r.out, Not(HasSubstr("bypass           error")));
  EXPECT_THAT(r.err, Not(HasSubstr("114")));
  // And --num-queues: two back-end queues for a one-queue workload run.
  const ProgramRun q = run_program(dir, vdma_bench_binary(),
                                   {"--backend-arg=--num-queues=2", "--mode", "bypass", "--runtime", "0.2",
                                    "--disk-size", "8M", "--no-verify", "--rw", "randread"});
  EXPECT_EQ(q.exit_code, 0) << q.err;
}

TEST(VdmaBenchEdges, RepeatInterleavesTheModesAndJsonCarriesEveryRound) {
  ScratchDir dir;
  BenchProcess b(dir, {"--mode", "bypass", "--mode", "offset", "--repeat", "2", "--runtime", "0.6", "--ramp-time",
                       "0.1", "--seed", "5", "--disk-size", "8M", "--iodepth", "8", "--json", "--progress",
                       "always"});
  const int status = b.wait();
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << b.err();
  // A B A B: the progress lines come in that order.
  const std::string err = b.err();
  const size_t a1 = err.find("mode 1/2 bypass round 1/2");
  const size_t b1 = err.find("mode 2/2 offset round 1/2");
  const size_t a2 = err.find("mode 1/2 bypass round 2/2");
  const size_t b2 = err.find("mode 2/2 offset round 2/2");
  ASSERT_NE(b2, std::string::npos) << err;
  EXPECT_LT(a1, b1);
  EXPECT_LT(b1, a2);
  EXPECT_LT(a2, b2);
  const auto j = nlohmann::json::parse(b.out());
  EXPECT_EQ(j["rounds"], 2);
  EXPECT_EQ(j["workload"]["seed"], 5);
  EXPECT_DOUBLE_EQ(j["workload"]["ramp_time_s"].get<double>(), 0.1);
  ASSERT_EQ(j["results"].size(), 2u);
  for (const auto& m : j["results"]) {
    EXPECT_EQ(m["ok"], true) << m.dump();
    ASSERT_EQ(m["runs"].size(), 2u);
    EXPECT_EQ(m["runs"][0]["round"], 1);
    EXPECT_EQ(m["runs"][1]["round"], 2);
    EXPECT_LE(m["iops"]["min"].get<double>(), m["iops"]["median"].get<double>());
    EXPECT_LE(m["iops"]["median"].get<double>(), m["iops"]["max"].get<double>());
    for (const auto& run : m["runs"]) {
      EXPECT_EQ(run["read_latency_ns"]["count"].get<uint64_t>() + run["write_latency_ns"]["count"].get<uint64_t>(),
                run["ios"].get<uint64_t>());
    }
  }
  EXPECT_DOUBLE_EQ(j["results"][0]["ratio_to_baseline"]["median"].get<double>(), 1.0);
  EXPECT_EQ(j["results"][1]["ratio_to_baseline"]["min"].get<double>() <=
                j["results"][1]["ratio_to_baseline"]["max"].get<double>(),
            true);
}

}  // namespace
}  // namespace vdma::e2e
