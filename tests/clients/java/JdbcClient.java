// pgjdbc (Debian's libpostgresql-jdbc-java) against the gateway: DatabaseMetaData, a
// PreparedStatement run past prepareThreshold (server-prepared, binary transfer), setFetchSize
// streaming, cancel. Expected answers: LAKEGATE_EXPECTED (tests/clients/python/expected.py).
// Run as a single-file program: java -cp /usr/share/java/postgresql.jar JdbcClient.java
import java.math.BigDecimal;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.*;
import java.util.*;
import java.util.regex.*;

public class JdbcClient {
    static String expected;

    static void check(boolean ok, String message) {
        if (!ok) {
            System.err.println("FAIL: " + message);
            System.exit(1);
        }
    }

    // The oracle is JSON; this reads the few fields needed without a JSON library (none is in
    // Debian's default classpath): each user's block, the aggregate rows, counts, e-mails.
    static String userBlock(String user) {
        int start = expected.indexOf("\"" + user + "\": {\"aggregate\"");
        return expected.substring(start, expected.indexOf("}", expected.indexOf("hcp_comments", start)) + 1);
    }

    static long number(String block, String key) {
        Matcher m = Pattern.compile("\"" + key + "\": (\\d+)").matcher(block);
        check(m.find(), "oracle has " + key);
        return Long.parseLong(m.group(1));
    }

    static String text(String key) {
        Matcher m = Pattern.compile("\"" + key + "\": \"((?:[^\"\\\\]|\\\\.)*)\"").matcher(expected);
        check(m.find(), "oracle has " + key);
        return m.group(1).replace("\\\"", "\"");
    }

    static List<String> aggregateRows(String block) {
        String list = block.substring(block.indexOf("[[") + 1, block.indexOf("]]") + 1);
        List<String> rows = new ArrayList<>();
        Matcher m = Pattern.compile("\\[([^\\]]*)\\]").matcher(list);
        while (m.find()) rows.add(m.group(1).replace("\"", "").replace(" ", ""));
        return rows;
    }

    static Connection connect(String user, Properties extra) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", user);
        props.setProperty("sslmode", "require");
        props.putAll(extra);
        if (System.getenv("JDBC_TRACE") != null) { props.setProperty("loggerLevel", "TRACE"); props.setProperty("loggerFile", System.getenv("JDBC_TRACE")); }
        String url = "jdbc:postgresql://127.0.0.1:" + System.getenv("LAKEGATE_PORT") + "/gtm";
        return DriverManager.getConnection(url, props);
    }

    static void scenario(String user) throws Exception {
        String block = userBlock(user);
        Properties props = new Properties();
        props.setProperty("prepareThreshold", "2");
        props.setProperty("binaryTransfer", "true");
        try (Connection conn = connect(user, props)) {
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseMajorVersion() >= 16, "server version " + meta.getDatabaseProductVersion());
            Set<String> schemas = new HashSet<>();
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
            }
            check(schemas.contains("gtm"), user + ": schemas " + schemas);
            Set<String> tables = new HashSet<>();
            try (ResultSet rs = meta.getTables(null, "gtm", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check(tables.contains("hcp") && tables.contains("sales"), user + ": tables " + tables);
            check(tables.contains("patients") == user.equals("carol"), user + ": patients " + tables);

            List<String> names = new ArrayList<>();
            Map<String, String> remarks = new HashMap<>();
            try (ResultSet rs = meta.getColumns(null, "gtm", "hcp", "%")) {
                while (rs.next()) {
                    String name = rs.getString("COLUMN_NAME");
                    names.add(name);
                    remarks.put(name, rs.getString("REMARKS"));
                    check(rs.getInt("NULLABLE") == DatabaseMetaData.columnNullable, name + " nullable");
                    if (name.equals("hcp_id")) check(rs.getInt("DATA_TYPE") == Types.BIGINT, "hcp_id is BIGINT");
                    if (name.equals("full_name")) check(rs.getString("TYPE_NAME").equals("text"), "full_name is text: " + rs.getString("TYPE_NAME"));
                }
            }
            String wantColumns = user.equals("carol") ? "[hcp_id, full_name, email, country, specialty, npi]"
                                                      : "[hcp_id, full_name, email, country, specialty]";
            check(names.toString().equals(wantColumns), user + ": columns " + names);
            check("Professional e-mail address".equals(remarks.get("email")), "email remark " + remarks.get("email"));
            try (ResultSet rs = meta.getPrimaryKeys(null, "gtm", "hcp")) {
                check(!rs.next(), "lake tables have no primary key");
            }
            try (ResultSet rs = meta.getIndexInfo(null, "gtm", "hcp", false, true)) {
                check(!rs.next(), "lake tables have no index");
            }
            int types = 0;
            try (ResultSet rs = meta.getTypeInfo()) {
                while (rs.next()) types++;
            }
            check(types > 10, "getTypeInfo lists types: " + types);

            // Past prepareThreshold the driver uses a named server statement and binary results.
            String sql = text("aggregate_sql").replace("{param}", "?");
            List<String> want = aggregateRows(block);
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int run = 0; run < 4; run++) {
                    ps.setInt(1, (int) number(expected, "min_units"));
                    List<String> got = new ArrayList<>();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            BigDecimal net = rs.getBigDecimal("net");
                            check(net.scale() == 2, "net keeps scale 2: " + net);
                            java.sql.Date first = rs.getDate("first_day");
                            Timestamp last = rs.getTimestamp("last_seen");
                            String never = rs.getString("never");
                            check(rs.wasNull(), "never is NULL");
                            got.add(rs.getString("country") + "," + rs.getLong("n") + "," + net.toPlainString() + ","
                                    + first + "," + last.toLocalDateTime().toString().replace("T", "") + ":00," + "null");
                        }
                    }
                    check(got.equals(want), user + ": aggregate run " + run + "\n got " + got + "\n want " + want);
                }
            }

            if (user.equals("alice")) {
                int hashed = 0;
                try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT hcp_id, email FROM gtm.hcp")) {
                    while (rs.next()) {
                        String email = rs.getString(2);
                        check(expected.contains("\"" + rs.getLong(1) + "\": \"" + email + "\""), "masked e-mail of " + rs.getLong(1));
                        hashed++;
                    }
                }
                check(hashed > 0, "alice sees some HCPs");
                try (Statement st = conn.createStatement()) {
                    st.executeQuery("SELECT * FROM gtm.patients");
                    check(false, "alice read patients");
                } catch (SQLException e) {
                    check("42P01".equals(e.getSQLState()), "patients: " + e.getSQLState() + " " + e.getMessage());
                }
            }

            // setFetchSize streams through a portal only inside a transaction.
            conn.setAutoCommit(false);
            long count = 0;
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(5000);
                try (ResultSet rs = st.executeQuery(text("large_sql"))) {
                    while (rs.next()) count++;
                }
            }
            conn.commit();
            conn.setAutoCommit(true);
            check(count == number(block, "large_count") && count >= 100000, user + ": large result " + count);

            // Statement.cancel from another thread sends a CancelRequest.
            try (Statement st = conn.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try {
                        while (!Thread.currentThread().isInterrupted()) {
                            Thread.sleep(200);
                            st.cancel();
                        }
                    } catch (Exception ignored) {
                    }
                });
                canceller.start();
                try {
                    st.executeQuery(text("long_sql"));
                    check(false, "long query was not cancelled");
                } catch (SQLException e) {
                    check("57014".equals(e.getSQLState()), "cancel: " + e.getSQLState());
                } finally {
                    canceller.interrupt();
                    canceller.join();
                }
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
                check(rs.next() && rs.getInt(1) == 1, "usable after cancel");
            }
        }
    }

    public static void main(String[] args) throws Exception {
        expected = Files.readString(Path.of(System.getenv("LAKEGATE_EXPECTED")));
        for (String user : new String[] {"alice", "carol"}) scenario(user);
        System.out.println("ok: pgjdbc " + org.postgresql.Driver.getVersion());
    }
}
