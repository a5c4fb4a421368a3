#include "cli/commands.h"
namespace sockrelay::cli {
int matrix_command(const Args&) { return kExitFailure; }  // written once the matrix lands
}  // namespace sockrelay::cli
