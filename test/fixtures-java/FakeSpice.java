// Test double for spice-1.0.jar: reads the pycocoevalcap input JSON and writes an output JSON
// in SPICE's format (scores per category; "NaN" strings where SPICE writes NaN), in reverse
// order. All.f = (number of words in the test caption) / 10; Object.f = "NaN".
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class FakeSpice {
  public static void main(String[] args) throws Exception {
    if (args.length != 7 || !args[1].equals("-cache") || !args[3].equals("-out") || !args[5].equals("-subset") || !args[6].equals("-silent")) {
      System.err.println("FakeSpice: unexpected arguments " + String.join(" ", args));
      System.exit(2);
    }
    String input = new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8);
    Files.createDirectories(Paths.get(args[2]));
    Files.write(Paths.get(args[2], "fake-cache-touched"), new byte[0]);
    Matcher ids = Pattern.compile("\"image_id\":\\s*([^,\\n]+),").matcher(input);
    Matcher tests = Pattern.compile("\"test\":\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(input);
    List<String> items = new ArrayList<>();
    while (ids.find()) {
      if (!tests.find()) throw new IllegalStateException("image without test caption");
      String test = tests.group(1).trim();
      int words = test.isEmpty() ? 0 : test.split(" +").length;
      items.add(0, "{\"image_id\": " + ids.group(1).trim() + ", \"scores\": {"
          + "\"All\": {\"pr\": 0.5, \"re\": 0.25, \"f\": " + (words / 10.0) + ", \"fn\": 3.0, \"numImages\": 1.0, \"fp\": 1.0, \"tp\": " + words + ".0}, "
          + "\"Object\": {\"pr\": \"NaN\", \"re\": \"NaN\", \"f\": \"NaN\", \"fn\": 0.0, \"numImages\": 1.0, \"fp\": 0.0, \"tp\": 0.0}}}");
    }
    Path out = Paths.get(args[4]);
    Files.write(out, ("[" + String.join(", ", items) + "]").getBytes(StandardCharsets.UTF_8));
  }
}
