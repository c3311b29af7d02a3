// Test double for meteor-1.5.jar: speaks the `-stdio` protocol pycocoevalcap uses.
// SCORE ||| ref1 ||| ... ||| hyp  ->  "hypWords refCount matchedWords" (hyp words found in any ref)
// EVAL ||| stats1 ||| ...         ->  one score per stats (matched/hypWords), then the corpus score.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;

public class FakeMeteor {
  public static void main(String[] args) throws Exception {
    if (!Arrays.equals(args, new String[] {"-", "-", "-stdio", "-l", "en", "-norm"})) {
      System.err.println("FakeMeteor: unexpected arguments " + Arrays.toString(args));
      System.exit(2);
    }
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      String[] parts = line.split(" \\|\\|\\| ", -1);
      if (parts[0].equals("SCORE")) {
        Set<String> refWords = new HashSet<>();
        for (int i = 1; i < parts.length - 1; i++) refWords.addAll(Arrays.asList(parts[i].trim().split(" +")));
        String hyp = parts[parts.length - 1].trim();
        String[] hw = hyp.isEmpty() ? new String[0] : hyp.split(" +");
        int matched = 0;
        for (String w : hw) if (refWords.contains(w)) matched++;
        System.out.println(hw.length + " " + (parts.length - 2) + " " + matched);
      } else if (parts[0].equals("EVAL")) {
        double totalHyp = 0, totalMatched = 0;
        for (int i = 1; i < parts.length; i++) {
          String[] s = parts[i].trim().split(" ");
          double h = Double.parseDouble(s[0]), m = Double.parseDouble(s[2]);
          totalHyp += h;
          totalMatched += m;
          System.out.println(h == 0 ? 0.0 : m / h);
        }
        System.out.println(totalHyp == 0 ? 0.0 : totalMatched / totalHyp);
      } else {
        System.err.println("FakeMeteor: bad line " + line);
        System.exit(3);
      }
      System.out.flush();
    }
  }
}
