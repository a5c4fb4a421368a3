#include "cli/commands.h"
namespace sockrelay::cli {
int check_command(const Args&) { return kExitFailure; }  // written once config + matrix land
}  // namespace sockrelay::cli
