// Usage text of the CLI commands: `--help` (or -h) at any level prints the lines of that
// command on stdout (exit 0); a wrong or missing argument prints them on stderr (exit 2).
// Each usage is one text whose entries start with "  kiln <words>"; indented lines below an
// entry belong to it.

export const wantsHelp = (args: string[]): boolean => args.includes('--help') || args.includes('-h');

/** The leading words of a command line, up to its first option: `auth client add --tenant x` gives auth, client, add. */
export const commandWords = (args: string[]): string[] => {
  const i = args.findIndex((a) => a.startsWith('-'));
  return i < 0 ? args : args.slice(0, i);
};

/**
 * The entries of `usage` for the command named by `words` (without "kiln"): the entries it
 * starts, or those of the longest prefix of it that names one (an unknown subcommand shows its
 * group's); "usage:" and all of it when nothing matches. `a|b` in an entry matches a or b.
 */
export function usageOf(usage: string, words: string[]): string {
  const entries: string[][] = [];
  for (const line of usage.split('\n').slice(1)) {
    if (/^ {2}kiln /.test(line) || entries.length === 0) entries.push([line]);
    else entries.at(-1)!.push(line);
  }
  for (let n = words.length; n > 0; n--) {
    const matched = entries.filter((e) => {
      const have = e[0].trim().split(/\s+/).slice(1);
      return words.slice(0, n).every((w, i) => have[i] !== undefined && have[i].split('|').includes(w));
    });
    if (matched.length) return ['usage:', ...matched.flat()].join('\n');
  }
  return usage;
}

/** A usage error: the reason, then the command's usage, on stderr; exit code 2. */
export function usageError(usage: string, words: string[], reason?: string): number {
  console.error(`${reason ? `${reason}\n` : ''}${usageOf(usage, words)}`);
  return 2;
}
